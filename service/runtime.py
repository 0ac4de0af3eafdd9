"""Everything a process owns, built from settings and closed in reverse order."""

from __future__ import annotations

import hashlib
import logging

import aiohttp
import httpx
import sqlalchemy as sa

from service import callbacks, signing, transport
from service.config import Settings
from service.db import Database
from service.delivery import Deliverer
from service.listener import Listener
from service.metrics import Metrics
from service.models import Setting
from service.poller import Poller
from service.supervisor import Supervisor, Worker
from service.upstream import Upstream

log = logging.getLogger(__name__)
settings_table = Setting.__table__  # type: ignore[attr-defined]
SECRET_KEY = "webhook_secret"  # noqa: S105 (the name of the setting, not a secret)


def key_digest(key: str) -> bytes:
    """What identifies a client key; the key itself is never stored."""
    return hashlib.sha256(key.encode()).digest()


class Runtime:
    """The database, HTTP clients, metrics and (optionally) the workers of one process."""

    def __init__(self, settings: Settings, workers: bool = True) -> None:
        self.settings = settings
        self.with_workers = workers
        self.key_digests = [key_digest(key.get_secret_value()) for key in settings.api_keys]
        self.db = Database(settings)
        self.callback_guard = callbacks.Guard(
            settings.callback_allow_private, settings.callback_allow_networks
        )
        self.metrics = Metrics()
        self.upstream_client = httpx.AsyncClient(
            transport=transport.RawTargetTransport(
                limits=httpx.Limits(max_connections=settings.upstream_max_concurrency + 4)
            ),
            follow_redirects=False,
        )
        self.upstream = Upstream(
            settings.upstream_base_url,
            settings.upstream_api_key,
            self.upstream_client,
            settings.upstream_timeout,
        )
        self.delivery_client = httpx.AsyncClient(
            transport=transport.RawTargetTransport(
                client=lambda: _delivery_session(settings, self.callback_guard),
            ),
            follow_redirects=False,
        )
        self.poller: Poller | None = None
        self.deliverer: Deliverer | None = None
        self.supervisor: Supervisor | None = None
        self.draining = False

    async def start(self, migrate: bool = True) -> None:
        if migrate:
            await self.db.migrate()
        secret = await load_secret(self.db, self.settings)
        if not self.settings.api_keys:
            log.warning("STATUS_PROXY_API_KEYS is not set: the API is open to anyone")
        if not self.with_workers:
            return
        self.deliverer = Deliverer(
            self.settings, self.db, self.delivery_client, secret, self.metrics, self.callback_guard
        )
        self.poller = Poller(
            self.settings, self.db, self.upstream, self.metrics, self.deliverer.kick
        )
        workers: list[Worker] = [self.poller, self.deliverer]
        if not self.db.is_sqlite:
            wake = {"tasks": self.poller.kick, "events": self.deliverer.kick}
            workers.append(Listener(self.settings, wake))
        self.supervisor = Supervisor(workers)
        self.supervisor.start()

    def kick_poller(self) -> None:
        if self.poller is not None:
            self.poller.kick()

    def kick_delivery(self) -> None:
        if self.deliverer is not None:
            self.deliverer.kick()

    def problems(self) -> list[str]:
        """Why this process should not take traffic, or nothing."""
        found = []
        if self.draining:
            found.append("shutting down")
        if self.supervisor is not None:
            found += self.supervisor.problems()
        if self.poller is not None and self.poller.auth_problem:
            found.append(f"{self.poller.auth_problem}: polling paused")
        return found

    async def stop(self) -> None:
        self.draining = True
        try:
            if self.supervisor is not None:
                await self.supervisor.stop()
        finally:
            await self.upstream_client.aclose()
            await self.delivery_client.aclose()
            await self.db.dispose()


def _delivery_session(settings: Settings, guard: callbacks.Guard) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=callbacks.connector(guard, settings.delivery_concurrency),
        auto_decompress=False,
    )


async def load_secret(db: Database, settings: Settings) -> str:
    """The configured secret, else the one generated once and kept in the database."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    async with db.write() as conn:
        await conn.execute(
            db.insert_ignore(settings_table, {"key": SECRET_KEY, "value": signing.new_secret()})
        )
        value = (
            await conn.execute(
                sa.select(settings_table.c.value).where(settings_table.c.key == SECRET_KEY)
            )
        ).scalar_one()
    return str(value)
