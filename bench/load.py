"""Closed-loop load: ``connections`` clients, each sending its next request when the
last one is answered, for ``seconds``. Client libraries: aiohttp, or plain httpx.

    python -m bench.load SPEC     one load generator, as bench.run starts them: SPEC is
                                  bench.run's spec() as JSON; prints the rate as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx


@dataclass
class Measured:
    requests: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def aiohttp_load(
    method: str,
    url: Callable[[int], str],
    seconds: float,
    connections: int,
    body: Callable[[int], Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Measured:
    counter = iter(range(10**9))
    done = errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                n = next(counter)
                payload = body(n) if body else None
                async with session.request(method, url(n), json=payload) as response:
                    await response.read()
                    if response.status >= 400:
                        errors += 1
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(connections)))
        return Measured(done, errors, time.monotonic() - start)


async def httpx_load(
    method: str,
    url: Callable[[int], str],
    seconds: float,
    connections: int,
    body: Callable[[int], Any] | None = None,
) -> Measured:
    counter = iter(range(10**9))
    done = errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as session:

        async def client() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                n = next(counter)
                payload = body(n) if body else None
                response = await session.request(method, url(n), json=payload)
                errors += response.status_code >= 400
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(connections)))
        return Measured(done, errors, time.monotonic() - start)


def run(spec: dict[str, Any]) -> dict[str, float]:
    """One load generator of bench.run: the rate, errors and requests it measured."""
    base = spec["url"]
    body: Callable[[int], Any] | None = None
    if spec.get("body") == "registration":
        callback = spec["callback"]

        def body(n: int) -> dict[str, Any]:
            return {"task_id": f"video_{spec['tag']}_{n}", "callback_url": callback}

    elif spec.get("body") == "webhook":
        sample = spec["sample"]

        def body(n: int) -> dict[str, Any]:
            return sample

    def url(n: int) -> str:
        return base

    if spec["library"] == "httpx":
        measured = asyncio.run(
            httpx_load(spec["method"], url, spec["seconds"], spec["connections"], body)
        )
    else:
        measured = asyncio.run(
            aiohttp_load(
                spec["method"], url, spec["seconds"], spec["connections"], body, spec["headers"]
            )
        )
    return {"rate": measured.rate, "errors": measured.errors, "requests": measured.requests}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
