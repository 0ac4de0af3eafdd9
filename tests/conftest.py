"""Fixtures: real databases (SQLite and PostgreSQL) and real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.main import create_app
from service.receiver import Receiver
from service.simulator import Simulator, TaskSpec
from tests.harness import SECRET, UPSTREAM_KEY, ServerThread, Service

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
REQUIRE_POSTGRES = os.environ.get("STATUS_PROXY_TEST_REQUIRE_POSTGRES") == "1"


def _postgres_up() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'status-proxy.db'}"
        return
    if not _postgres_up():
        message = f"PostgreSQL is not running on {PG_HOST}:{PG_PORT}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (required in CI)")
        pytest.skip(message)
    name = f"sp_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Upstream:
    def __init__(self, simulator: Simulator, thread: ServerThread) -> None:
        self.sim = simulator
        self.url = thread.url

    def add(self, **spec: Any) -> str:
        return self.sim.add(TaskSpec(**spec)).id

    def polls(self, task_id: str) -> int:
        return self.sim.polls.get(task_id, 0)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    simulator = Simulator(api_key=UPSTREAM_KEY, duration=1.0)
    thread = ServerThread(simulator.create_app()).start()
    yield Upstream(simulator, thread)
    thread.stop()


class Hooks:
    def __init__(self, receiver: Receiver, thread: ServerThread) -> None:
        self.receiver = receiver
        self.url = thread.url

    def at(self, path: str) -> list[Any]:
        return self.receiver.at(path)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Receiver(secret=SECRET)
    thread = ServerThread(receiver.create_app()).start()
    yield Hooks(receiver, thread)
    thread.stop()


def test_settings(db_url: str, upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "upstream_base_url": upstream_url,
        "upstream_api_key": UPSTREAM_KEY,
        "webhook_secret": SECRET,
        "callback_allow_private": True,
        "poll_interval_min": 0.2,
        "poll_interval_max": 0.5,
        "delivery_retry_schedule": (0.2, 0.4, 0.6),
        "delivery_timeout": 3.0,
        "not_found_grace": 3.0,
        "upstream_timeout": 3.0,
        "log_level": "INFO",
    }
    values.update(overrides)
    return Settings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def make_service(db_url: str, upstream: Upstream) -> Iterator[Callable[..., Service]]:
    """Start status-proxy (API and workers) against the simulator; stopped after the test."""
    running: list[Service] = []

    def make(**overrides: Any) -> Service:
        settings = test_settings(db_url, upstream.url, **overrides)
        thread = ServerThread(create_app(settings)).start()
        keys = settings.api_keys
        headers = {"Authorization": f"Bearer {keys[0].get_secret_value()}"} if keys else {}
        client = httpx.Client(base_url=thread.url, timeout=15, headers=headers)
        service = Service(thread.url, settings, thread, client)
        running.append(service)
        return service

    yield make
    for service in running:
        service.stop()


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    return make_service()
