"""Fixtures: real databases (SQLite and PostgreSQL) and real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from service import simulator
from service.config import Settings
from service.main import create_app
from service.receiver import Receiver
from service.simulator import Simulator, Stage, TaskSpec
from tests.harness import RUNNING, SECRET, UPSTREAM_KEY, ServerThread, Service, join_servers

# The PostgreSQL half of the suite creates a database per test (and drops it after) on
# the server this URL names, as the role it names: that role needs CREATEDB, not superuser.
# When the server cannot be used, those tests are skipped with the reason; CI sets
# STATUS_PROXY_TEST_REQUIRE_POSTGRES=1 and fails them instead.
PG_ADMIN_URL = os.environ.get(
    "STATUS_PROXY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("STATUS_PROXY_TEST_REQUIRE_POSTGRES") == "1"
_probe: list[str | None] = []  # once per test process: why PostgreSQL is unusable, or None


def _dsn(url: str) -> str:
    """asyncpg's form of a SQLAlchemy-style URL (no driver suffix)."""
    scheme, _, rest = url.partition("://")
    return "postgresql://" + rest if scheme.split("+")[0] in ("postgresql", "postgres") else url


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def _where() -> str:
    parts = urlsplit(PG_ADMIN_URL)
    return f"{parts.username or 'postgres'}@{parts.hostname}:{parts.port or 5432}"


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _check() -> str | None:
    """Connect and create a database as the tests will; the reason it fails, or None."""
    name = f"sp_probe_{uuid.uuid4().hex[:12]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
        await _admin(f'DROP DATABASE IF EXISTS "{name}"')
    except OSError as exc:
        return f"PostgreSQL at {_where()} cannot be reached ({type(exc).__name__}: {exc})"
    except Exception as exc:  # asyncpg's errors: password needed, no CREATEDB, no such role…
        return f"PostgreSQL at {_where()} cannot be used ({type(exc).__name__}: {exc})"
    return None


def postgres_url() -> str:
    """A fresh database on the test server (skip or fail when there is none); drop_postgres
    removes it."""
    if not _probe:
        _probe.append(asyncio.run(_check()))
    if (reason := _probe[0]) is not None:
        hint = "; set STATUS_PROXY_TEST_POSTGRES_URL to a server and role with CREATEDB"
        if REQUIRE_POSTGRES:
            pytest.fail(reason + " (required: STATUS_PROXY_TEST_REQUIRE_POSTGRES=1)")
        pytest.skip(reason + hint)
    name = f"sp_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return _with_database(PG_ADMIN_URL, name)


def drop_postgres(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow go first. xdist hands tests out in collection order: a test of a
    minute handed out last would end the run a minute after the others."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'status-proxy.db'}"
        return
    kept = set(RUNNING)
    url = postgres_url()
    try:
        yield url
    finally:
        join_servers(kept)  # the services using it stop before it goes
        drop_postgres(url)


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    """Servers a test started stop together at its end, not one after another."""
    kept = set(RUNNING)
    yield
    join_servers(kept)


CHROMIUM = "/usr/bin/chromium"
REQUIRE_BROWSER = os.environ.get("STATUS_PROXY_TEST_REQUIRE_BROWSER") == "1"


def _missing() -> str | None:
    if not shutil.which(CHROMIUM):
        return f"{CHROMIUM} is not installed (Debian package chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


@pytest.fixture
def browser_page():
    missing = _missing()
    if missing:
        if REQUIRE_BROWSER:
            pytest.fail(missing + " (required in CI)")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # No network here but loopback: keep chromium from calling home.
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 760})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.dialogs = dialogs  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


class Upstream:
    def __init__(
        self, simulator: Stage, thread: ServerThread, family: str = "openai-video"
    ) -> None:
        self.sim = simulator
        self.url = thread.url
        self.family = family

    def add(self, **spec: Any) -> str:
        return self.sim.add(TaskSpec(**spec)).id

    def polls(self, task_id: str) -> int:
        return self.sim.polls.get(task_id, 0)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    simulator = Simulator(api_key=UPSTREAM_KEY, duration=1.0)
    thread = ServerThread(simulator.create_app()).start()
    yield Upstream(simulator, thread)
    thread.stop_soon()


@pytest.fixture
def simulate() -> Iterator[Callable[..., Upstream]]:
    """Start simulators of provider families on 127.0.0.1, stopped after the test:
    ``simulate("runway")`` demands UPSTREAM_KEY and runs tasks for 1 s unless told
    otherwise (``api_key``, ``duration``, ``refresh`` for new-api-task, ``profile``)."""
    threads: list[ServerThread] = []

    def start(family: str, **options: Any) -> Upstream:
        options.setdefault("api_key", UPSTREAM_KEY)
        options.setdefault("duration", 1.0)
        options.setdefault("refresh", 0.2)
        sim = simulator.for_family(family, **options)
        thread = ServerThread(sim.create_app()).start()
        threads.append(thread)
        return Upstream(sim, thread, family)

    yield start
    for thread in threads:
        thread.stop_soon()


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
    thread.stop_soon()


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
    return Settings(_env_file=None, **values)


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
        service.client.close()
        service.thread.stop_soon()


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    return make_service()
