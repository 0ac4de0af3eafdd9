"""A webhook receiver that verifies signatures and records what arrives (demo and tests)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response

from service import signing


@dataclass(slots=True)
class Delivery:
    """One webhook as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    verified: bool | None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Answers each path from a plan of status codes (the last one repeats), 200 by default."""

    def __init__(
        self, secret: str | None = None, on_delivery: Callable[[Delivery], None] | None = None
    ) -> None:
        self.secret = secret
        self.on_delivery = on_delivery
        self.deliveries: list[Delivery] = []
        self.plans: dict[str, list[int]] = {}
        self.delays: dict[str, float] = {}
        self.headers: dict[str, dict[str, str]] = {}

    def plan(
        self,
        path: str,
        *statuses: int,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.plans[path] = list(statuses)
        self.delays[path] = delay
        self.headers[path] = headers or {}

    def at(self, path: str) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.path == path]

    def create_app(self) -> FastAPI:
        app = FastAPI(title="status-proxy webhook receiver")

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            body = await request.body()
            headers = {key.lower(): value for key, value in request.headers.items()}
            verified = None
            if self.secret is not None:
                verified = signing.verify(
                    self.secret,
                    headers.get("webhook-id", ""),
                    int(headers.get("webhook-timestamp", "0") or 0),
                    body,
                    headers.get("webhook-signature", ""),
                )
            path = "/" + path
            delivery = Delivery(path, headers, body, time.time(), verified)
            if self.delays.get(path):
                await asyncio.sleep(self.delays[path])
            plan = self.plans.get(path, [])
            status = plan.pop(0) if len(plan) > 1 else (plan[0] if plan else 200)
            self.deliveries.append(delivery)
            if self.on_delivery is not None:
                self.on_delivery(delivery)
            return Response(status_code=status, headers=self.headers.get(path) or None)

        return app
