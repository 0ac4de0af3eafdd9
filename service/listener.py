"""Cross-process wake-ups on PostgreSQL: LISTEN for the NOTIFY that API replicas send
when they commit new work, so separate workers start on it at once instead of at
their next tick. Best effort: without it, workers still find the work on their own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from service import supervisor
from service.config import Settings
from service.db import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_WAIT = 5.0


class Listener:
    """Keeps one LISTEN connection open and turns notifications into kicks."""

    name = "listener"

    def __init__(self, settings: Settings, wake: dict[str, Callable[[], None]]) -> None:
        # asyncpg takes the plain postgresql:// form of the URL.
        self.dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.wake = wake
        self.outage = supervisor.Outage(self.name)  # never reported: polling covers for it

    def kick(self) -> None:
        """Nothing to do: the listener waits on its connection."""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                conn = await self.connect()
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                log.info("listener: cannot connect (%s); retrying", type(exc).__name__)
                await supervisor.pause(stop, RECONNECT_WAIT)
                continue
            lost = await self._listen(conn, stop)
            if not stop.is_set():
                # Work may have been announced while we were away: look now.
                for wake in self.wake.values():
                    wake()
                await supervisor.pause(stop, RECONNECT_WAIT if lost else 0)

    async def connect(self) -> asyncpg.Connection:
        """The LISTEN connection, apart from the pool: it stays open for as long as we run."""
        return await asyncpg.connect(self.dsn, timeout=10)

    async def _listen(self, conn: asyncpg.Connection, stop: asyncio.Event) -> bool:
        """Relay notifications until we stop or the connection drops; True if it dropped."""
        lost = asyncio.Event()
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())]
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncpg.PostgresError) as exc:
            log.info("listener: connection lost (%s); reconnecting", type(exc).__name__)
            lost.set()
        finally:
            for waiter in waiters:
                waiter.cancel()
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)
        return lost.is_set()

    def _notified(self, _conn: object, _pid: int, _channel: str, topic: str) -> None:
        wake = self.wake.get(topic)
        if wake is not None:
            wake()
