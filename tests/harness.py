"""Real servers on 127.0.0.1 for the tests: the service, the simulator, the receiver."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
import uvicorn
import uvloop
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from service.cli import Server
from service.config import Settings, async_url

T = TypeVar("T")

UPSTREAM_KEY = "sk-upstream-test-9f3a1c"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return int(sock.getsockname()[1])


_HELD: list[socket.socket] = []


def refused_port() -> int:
    """A port that refuses connections for as long as this process runs: bound, never
    listening, so no server of a test running beside this one can take it (a port free
    a moment ago can be)."""
    if not _HELD:
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        _HELD.append(held)
    return int(_HELD[0].getsockname()[1])


class QuickServer(Server):
    """Notices ``should_exit`` within 10 ms, not uvicorn's 100 ms tick: the suite stops
    thousands of servers."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            for _ in range(10):
                if self.should_exit:
                    return
                await asyncio.sleep(0.01)
            counter += 1


RUNNING: list[ServerThread] = []  # started in this test, not yet joined


def join_servers(keep: set[ServerThread] | frozenset[ServerThread] = frozenset()) -> None:
    """Stop every server still running but those in ``keep`` (started by a fixture of a
    wider scope), all at once: those asked to stop already, and the rest."""
    going = [thread for thread in RUNNING if thread not in keep]
    for thread in going:
        thread.server.should_exit = True
    for thread in going:
        thread.thread.join(30)
        RUNNING.remove(thread)


class ServerThread:
    """A uvicorn server with its own event loop in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5)
        self.server = QuickServer(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            # uvloop, as uvicorn picks in production; the stock loop in a thread adds
            # ~40 ms to every exchange on loopback here.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:
            self.error = exc

    def start(self) -> ServerThread:
        RUNNING.append(self)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        if self in RUNNING:
            RUNNING.remove(self)

    def stop_soon(self) -> None:
        """Ask it to stop; ``join_servers`` waits for it with the test's other servers."""
        self.server.should_exit = True


def sql(database_url: str, *statements: str) -> list[Any]:
    """Run statements on the service's database from outside, as an operator would."""

    async def run() -> list[Any]:
        engine = create_async_engine(async_url(database_url))
        try:
            async with engine.begin() as conn:
                results = [await conn.execute(sa.text(statement)) for statement in statements]
                return [result.all() if result.returns_rows else None for result in results]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def eventually(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)


@dataclass
class Service:
    """A running status-proxy and a client for it."""

    url: str
    settings: Settings
    thread: ServerThread
    client: httpx.Client

    def register(self, task_id: str, callback_url: str, **fields: Any) -> httpx.Response:
        return self.client.post(
            "/v1/registrations", json={"task_id": task_id, "callback_url": callback_url, **fields}
        )

    def registration(self, registration_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/registrations/{registration_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def attempts(self, registration_id: str) -> list[dict[str, Any]]:
        response = self.client.get(
            f"/v1/registrations/{registration_id}/deliveries", params={"limit": 100}
        )
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    def stop(self) -> None:
        self.client.close()
        self.thread.stop()


def metric(service: Service, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (0 when it has not been counted yet)."""
    text = service.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


class Canned:
    """An HTTP/1.1 server on 127.0.0.1 in the test's own event loop that answers every
    request on a connection with ``answer`` (written as given, so it may be cut short
    or lie about its length), keeps each request head and counts connections; with
    ``hang_up`` it closes the connection after each answer."""

    def __init__(self, answer: bytes, hang_up: bool = False) -> None:
        self.answer = answer
        self.hang_up = hang_up
        self.heads: list[bytes] = []
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Canned:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def header(self, number: int, name: bytes) -> list[bytes]:
        """The values of header ``name`` (lower case) in request ``number``."""
        lines = self.heads[number].split(b"\r\n")[1:]
        return [v.strip() for n, _, v in (x.partition(b":") for x in lines) if n.lower() == name]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = self.header(len(self.heads) - 1, b"content-length")
                await reader.readexactly(int(length[0]) if length else 0)
                writer.write(self.answer)
                await writer.drain()
                if self.hang_up:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
