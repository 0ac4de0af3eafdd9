"""Everything a process owns, built from settings and closed in reverse order."""

from __future__ import annotations

import hashlib
import logging
import time

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import service
from service import callbacks, notifier, operator_events, signing, transport, upstreams, wire
from service.config import DEFAULT_UPSTREAM, Settings, UpstreamConfig
from service.db import Database
from service.delivery import Deliverer
from service.listener import Listener
from service.metrics import Metrics
from service.models import Setting, Task
from service.poller import Poller
from service.supervisor import Supervisor, Worker
from service.upstream import Upstream
from service.upstreams import Family

log = logging.getLogger(__name__)
settings_table = Setting.__table__  # type: ignore[attr-defined]
SECRET_KEY = "webhook_secret"  # noqa: S105 (the name of the setting, not a secret)


def key_digest(key: str) -> bytes:
    """What identifies a client key; the key itself is never stored."""
    return hashlib.sha256(key.encode()).digest()


class Runtime:
    """The database, HTTP clients, metrics and (optionally) the workers of one process."""

    def __init__(self, settings: Settings, workers: bool = True, api: bool = True) -> None:
        self.settings = settings
        self.with_workers = workers
        self.with_api = api
        self.key_digests = [key_digest(key.get_secret_value()) for key in settings.api_keys]
        self.db = Database(settings)
        self.callback_guard = callbacks.Guard(
            settings.callback_allow_private, settings.callback_allow_networks
        )
        self.metrics = Metrics()
        if self.db.group is not None:
            self.db.group.observe = self.metrics.write_batch.observe
        self.upstream_configs = settings.upstream_configs()
        # One client per upstream: its own connections, so a slow one holds none of
        # another's.
        self.upstream_clients = {
            name: _upstream_client(config) for name, config in self.upstream_configs.items()
        }
        self.upstreams = {
            name: Upstream(
                config.base_url,
                config.api_key,
                self.upstream_clients[name],
                config.timeout,
                upstreams.family(config.family),
                name,
            )
            for name, config in self.upstream_configs.items()
        }
        self.families: dict[str, Family] = {
            name: upstream.family for name, upstream in self.upstreams.items()
        }
        # Webhooks go through our own HTTP/1.1 client (service/wire.py), every
        # connection to an address the callback guard has vetted. A receiver's answer
        # is kept as sent (for the attempt log): none is asked to come compressed.
        self.delivery_client = httpx.AsyncClient(
            transport=wire.Transport(
                wire.Pool(settings.delivery_concurrency, callbacks.resolver(self.callback_guard))
            ),
            follow_redirects=False,
            headers=_AS_SENT,
        )
        # The operator's URL is its own setting: a client without the callback guard.
        self.operator_client = httpx.AsyncClient(
            transport=wire.Transport(), follow_redirects=False, headers=_AS_SENT
        )
        self.secret = ""  # the webhook secret, loaded at start
        self.pollers: dict[str, Poller] = {}
        self.deliverer: Deliverer | None = None
        self.notifier: notifier.Notifier | None = None
        self.supervisor: Supervisor | None = None
        self.draining = False

    async def start(self, migrate: bool = True) -> None:
        if migrate:
            await self.db.migrate()
        secret = self.secret = await load_secret(self.db, self.settings)
        self._announce()
        await self._warn_unconfigured()
        if not self.with_workers:
            return
        _warn_short_window(self.settings)
        self.deliverer = Deliverer(
            self.settings, self.db, self.delivery_client, secret, self.metrics, self.callback_guard
        )
        for name, upstream in self.upstreams.items():
            # The first (default) poller also runs the housekeeping of all of them.
            self.pollers[name] = Poller(
                self.settings.scoped(self.upstream_configs[name]),
                self.db,
                upstream,
                self.metrics,
                self.deliverer.kick,
                self.families,
                housekeeping=not self.pollers,
            )
        workers: list[Worker] = [*self.pollers.values(), self.deliverer]
        if operator_events.enabled(self.settings):
            self.notifier = notifier.Notifier(
                self.settings, self.db, self.operator_client, secret, self.metrics
            )
            workers.append(self.notifier)
        if not self.db.is_sqlite:
            wake = {"tasks": self.kick_poller, "events": self.deliverer.kick}
            workers.append(Listener(self.settings, wake))
        self.supervisor = Supervisor(workers, self.metrics)
        self.supervisor.start()

    @property
    def upstream(self) -> Upstream:
        """The upstream named ``default``."""
        return self.upstreams[DEFAULT_UPSTREAM]

    @property
    def poller(self) -> Poller | None:
        """The default upstream's poller, when this process polls."""
        return self.pollers.get(DEFAULT_UPSTREAM)

    def _announce(self) -> None:
        """One line that says what this process is, then what an operator must fix."""
        settings = self.settings
        api = "off" if not self.with_api else "open" if not settings.api_keys else "keyed"
        key = "with a key" if settings.upstream_api_key is not None else "WITHOUT a key"
        others = [
            f"{name} ({config.family}, {config.base_url})"
            for name, config in self.upstream_configs.items()
            if name != DEFAULT_UPSTREAM
        ]
        log.info(
            "status-proxy %s starting: database %s, upstream %s (%s)%s, API %s%s, workers %s",
            service.__version__,
            safe_database_url(settings.database_url),
            settings.upstream_base_url,
            key,
            f", upstreams {', '.join(others)}" if others else "",
            api,
            _count_keys(len(settings.api_keys)) if settings.api_keys and self.with_api else "",
            "on" if self.with_workers else "off",
        )
        if self.with_api and not settings.api_keys:
            log.warning("STATUS_PROXY_API_KEYS is not set: the API is open to anyone")
        if settings.upstream_api_key is None:
            log.warning(
                "STATUS_PROXY_UPSTREAM_API_KEY is not set: requests go upstream without a key, "
                "and a real gateway refuses them"
            )

    async def _warn_unconfigured(self) -> None:
        """Tasks still watched on an upstream no longer configured are not polled: say so
        at start, with how many, so that an operator who removed it by mistake sees it."""
        tasks = Task.__table__  # type: ignore[attr-defined]
        query = (
            sa.select(tasks.c.upstream, sa.func.count())
            .where(tasks.c.state == "watching", tasks.c.upstream.not_in(list(self.upstreams)))
            .group_by(tasks.c.upstream)
        )
        async with self.db.read(quick=False) as conn:
            stranded = (await conn.execute(query)).all()
        for name, count in stranded:
            log.warning(
                "%d watched task(s) belong to upstream %r, which is not configured: they are "
                "not polled until STATUS_PROXY_UPSTREAMS names it again, and are given up "
                "after STATUS_PROXY_TASK_TIMEOUT",
                count,
                name,
            )

    def upstream_view(self, name: str = DEFAULT_UPSTREAM) -> dict[str, object]:
        """What this process knows of one upstream: from its polls, or nothing."""
        config = self.upstream_configs[name]
        view: dict[str, object] = {"base_url": config.base_url, "family": config.family}
        poller = self.pollers.get(name)
        if poller is None:
            return {**view, "state": "not_polled_by_this_process"}
        view.update(poller.health.as_dict())
        if poller.auth_problem:
            view["state"] = "key_refused"
        elif poller.limiter.paused_until > time.monotonic():
            view["rate_limited"] = True
        return view

    def kick_poller(self, upstream: str | None = None) -> None:
        """Have the pollers (or one upstream's) look for due tasks now."""
        for name, poller in self.pollers.items():
            if upstream is None or name == upstream:
                poller.kick()

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
        for name, poller in self.pollers.items():
            found += upstream_problems(name, poller)
        return found

    async def stop(self) -> None:
        self.draining = True
        try:
            if self.supervisor is not None:
                await self.supervisor.stop()
        finally:
            for client in self.upstream_clients.values():
                await client.aclose()
            await self.delivery_client.aclose()
            await self.operator_client.aclose()
            await self.db.dispose()


def upstream_problems(name: str, poller: Poller) -> list[str]:
    """Why one upstream's polls do not work (its key refused, no answers), or nothing."""
    found = []
    if poller.auth_problem:
        found.append(f"upstream {name}: {poller.auth_problem}: polling paused")
    if unreachable := poller.health.problem():
        found.append(f"upstream {name}: {unreachable}")
    return found


_AS_SENT = {"Accept-Encoding": "identity"}


def _upstream_client(config: UpstreamConfig) -> httpx.AsyncClient:
    """Polls go through our own HTTP/1.1 client (at most the upstream's concurrency at
    once); the gateway's requests, with their streamed bodies, through aiohttp."""
    below = transport.Transport(limits=httpx.Limits(max_connections=config.max_concurrency + 4))
    below.pool = wire.Pool(config.max_concurrency)
    return httpx.AsyncClient(transport=below, follow_redirects=False)


def _count_keys(count: int) -> str:
    return f" ({count} key{'' if count == 1 else 's'})"


def safe_database_url(url: str) -> str:
    """The database URL without its password, for logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an odd URL: say which kind only
        return url.partition("://")[0] + "://…"


async def stored_secret(db: Database) -> str | None:
    """The secret the service generated and kept, or None (none yet, or no schema)."""
    try:
        async with db.read() as conn:
            value = (
                await conn.execute(
                    sa.select(settings_table.c.value).where(settings_table.c.key == SECRET_KEY)
                )
            ).scalar_one_or_none()
    except sa.exc.ProgrammingError:  # no settings table (PostgreSQL): never migrated
        return None
    except sa.exc.OperationalError as exc:  # SQLite says "no such table" this way
        if "no such table" in str(exc):
            return None
        raise
    return None if value is None else str(value)


async def load_secret(db: Database, settings: Settings) -> str:
    """The open API's secret: the configured one, else the one generated once and kept in
    the database (checked as it is read: MalformedSecret if someone spoiled it)."""
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
    try:
        return signing.check(str(value))
    except signing.MalformedSecret as exc:
        raise signing.MalformedSecret(
            f"the webhook secret stored in the database (settings table, key {SECRET_KEY!r}) "
            f"is malformed: {exc}; delete that row to have a new one generated, or set "
            "STATUS_PROXY_WEBHOOK_SECRET"
        ) from None


def _warn_short_window(settings: Settings) -> None:
    """A retry schedule whose whole span is shorter than the circuit's cool-down lets
    events to an origin whose circuit opened die before its first probe, some never
    sent: said at start, since both are the operator's to set."""
    span = sum(settings.delivery_retry_schedule)
    if span < settings.circuit_cooldown:
        log.warning(
            "STATUS_PROXY_DELIVERY_RETRY_SCHEDULE spans %gs, less than "
            "STATUS_PROXY_CIRCUIT_COOLDOWN (%gs): webhooks waiting on an open circuit die "
            "at the end of their retry window, before its first probe, some never sent",
            span, settings.circuit_cooldown,
        )  # fmt: skip
