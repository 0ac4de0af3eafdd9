"""Closed-loop load: ``connections`` clients, each sending its next request when the
last one is answered, for ``seconds``. Client libraries: aiohttp, or plain httpx."""

from __future__ import annotations

import asyncio
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
