"""The poller: leases due tasks, asks the upstream once per task, writes what it learnt."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import outbox, registrations, supervisor, tasks
from service.config import Settings
from service.db import UNAVAILABLE, Database
from service.metrics import Metrics
from service.models import Task
from service.ratelimit import RateLimiter
from service.upstream import Fetch, Upstream

log = logging.getLogger(__name__)
table = Task.__table__  # type: ignore[attr-defined]

CLAIM_BATCH = 200
IDLE_WAIT = 1.0
FLUSH_DELAY = 0.02
FLUSH_SIZE = 200
SWEEP_EVERY = 5.0
AUTH_PROBE_EVERY = 15.0
AUTH_LOG_EVERY = 60.0


class Poller:
    """One upstream request per due task, within the global rate and concurrency limits."""

    name = "poller"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        upstream: Upstream,
        metrics: Metrics,
        on_events: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.db = db
        self.upstream = upstream
        self.metrics = metrics
        self.on_events = on_events
        self.limiter = RateLimiter(settings.upstream_rate_limit)
        self.lease = settings.upstream_timeout + 10
        self.auth_problem: str | None = None
        self._auth_logged = 0.0
        self._next_probe = 0.0
        self._kick = asyncio.Event()
        self.outage = supervisor.Outage(self.name)
        # Probing a refused key: at the pace of routine polls, between 1 s and 15 s apart.
        self._probe_every = min(AUTH_PROBE_EVERY, max(1.0, settings.poll_interval_max))
        self._results: list[tuple[tasks.Claimed, Fetch]] = []
        self._inflight: set[asyncio.Task[None]] = set()

    def kick(self) -> None:
        """Look for due tasks now (a registration arrived, results wait, or we stop)."""
        self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        next_sweep = 0.0
        try:
            while not stop.is_set():
                try:
                    now = time.time()
                    if now >= next_sweep:
                        await self._sweep(now)
                        next_sweep = now + SWEEP_EVERY
                    await self._flush()
                    started = await self._start_due()
                except UNAVAILABLE as exc:
                    await supervisor.pause(stop, self.outage.failed(exc))
                    continue
                self.outage.recovered()
                if started and started == self._room():
                    continue  # more may be due
                await supervisor.nap(self._kick, self._wait_hint())
        finally:
            await self._drain()

    def _room(self) -> int:
        return min(
            self.settings.upstream_max_concurrency - len(self._inflight),
            self.limiter.available(),
            CLAIM_BATCH,
        )

    def _wait_hint(self) -> float:
        # Waking at half the shortest interval keeps a task's lag under half its interval.
        wait = min(IDLE_WAIT, self.settings.poll_interval_min / 2)
        if self.limiter.available() == 0:
            wait = min(wait, max(0.01, self.limiter.wait()))
        return wait

    async def _start_due(self) -> int:
        room = self._room()
        if self.auth_problem is not None:
            # Paused: only a probe now and then, to notice when the key works again.
            if time.monotonic() < self._next_probe:
                return 0
            self._next_probe = time.monotonic() + self._probe_every
            room = min(room, 1)
        if room <= 0:
            return 0
        now = time.time()
        async with self.db.write() as conn:
            claimed = await claim(conn, now, room, self.lease)
        for task in claimed:
            self.metrics.poll_lag.observe(max(0.0, now - task.due_at))
            self.limiter.take()
            job = asyncio.create_task(self._poll(task))
            self._inflight.add(job)
            job.add_done_callback(self._inflight.discard)
        return len(claimed)

    async def _poll(self, task: tasks.Claimed) -> None:
        fetch = await self.upstream.fetch(task.task_id)
        self.metrics.upstream_requests.labels(fetch.outcome).inc()
        self._note(fetch)
        self._results.append((task, fetch))
        if len(self._results) >= FLUSH_SIZE or len(self._inflight) <= 1:
            self.kick()
        elif len(self._results) == 1:
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self.kick)

    def _note(self, fetch: Fetch) -> None:
        if fetch.outcome == "rate_limited":
            streak = self.limiter.streak
            pause = self.limiter.rate_limited(fetch.retry_after)
            if self.limiter.streak != streak:  # a new pause, not its echo from requests in flight
                log.warning("upstream rate limit (429): pausing all polls for %.1fs", pause)
            return
        if fetch.outcome not in ("ok", "not_found"):
            self.limiter.settled()
        if fetch.outcome == "unauthorized":
            self.auth_problem = fetch.detail
            if time.monotonic() - self._auth_logged >= AUTH_LOG_EVERY:
                self._auth_logged = time.monotonic()
                log.error("%s: polling paused until the key works", fetch.detail)
        elif fetch.outcome in ("ok", "not_found"):
            self.limiter.succeeded()
            if self.auth_problem is not None:
                log.info("upstream accepts our key again: polling resumes")
                self.auth_problem = None

    async def _flush(self) -> None:
        if not self._results:
            return
        # Answers stay queued until written; the lease check in apply() discards stale ones.
        batch = list(self._results)
        now = time.time()
        async with self.db.write() as conn:
            emitted = await apply(conn, batch, now, self.settings)
        del self._results[: len(batch)]
        if emitted:
            self.on_events()

    async def _sweep(self, now: float) -> None:
        emitted = await registrations.give_up_overdue(self.db, now, self.settings.task_timeout)
        if emitted:
            self.on_events()

    async def _drain(self) -> None:
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.settings.upstream_timeout + 5)
        for job in self._inflight:
            job.cancel()
        try:
            await asyncio.shield(self._flush())
        except Exception:
            log.exception("could not write the last poll results; their leases will expire")


def due_tasks(now: float, limit: int) -> sa.Select[tuple[str]]:
    """The most overdue tasks first: a fair rotation when the budget is short, with
    never-polled tasks (due at 0) ahead of all. Served by ix_tasks_due, never a scan."""
    return (
        sa.select(table.c.task_id)
        .where(
            table.c.state == "watching",
            table.c.next_poll_at <= now,
            sa.or_(table.c.lease_until.is_(None), table.c.lease_until < now),
        )
        .order_by(table.c.next_poll_at)
        .limit(limit)
    )


async def claim(conn: AsyncConnection, now: float, limit: int, lease: float) -> list[tasks.Claimed]:
    """Lease up to ``limit`` due tasks."""
    due = due_tasks(now, limit).with_for_update(skip_locked=True)
    lease_until = now + lease
    rows = (
        await conn.execute(
            table.update()
            .where(table.c.task_id.in_(due.scalar_subquery()))
            .values(lease_until=lease_until)
            .returning(
                table.c.task_id,
                table.c.interval,
                table.c.raw_status,
                table.c.progress,
                table.c.not_found_since,
                table.c.errors,
                table.c.empty_completions,
                table.c.watch_started_at,
                table.c.next_poll_at,
                table.c.polled_at,
            )
        )
    ).all()
    return [
        tasks.Claimed(
            task_id=row.task_id,
            lease_until=lease_until,
            interval=row.interval,
            raw_status=row.raw_status,
            progress=row.progress,
            not_found_since=row.not_found_since,
            errors=row.errors,
            empty_completions=row.empty_completions,
            watch_started_at=row.watch_started_at,
            # A first poll is due from the moment the task was registered.
            due_at=row.next_poll_at if row.polled_at is not None else row.watch_started_at,
        )
        for row in rows
    ]


async def apply(
    conn: AsyncConnection,
    batch: list[tuple[tasks.Claimed, Fetch]],
    now: float,
    settings: Settings,
) -> int:
    """Write a batch of poll answers and the events they cause, in one transaction."""
    leases: dict[str, float | None] = dict(
        (
            await conn.execute(
                sa.select(table.c.task_id, table.c.lease_until).where(
                    table.c.task_id.in_([task.task_id for task, _ in batch])
                )
            )
        ).all()
    )
    # Only the holder of the lease may write: an expired lease means another worker
    # owns the task now, and its answer counts instead.
    batch = [(task, fetch) for task, fetch in batch if leases.get(task.task_id) == task.lease_until]
    shapes: dict[tuple[str, ...], list[dict[str, object]]] = {}
    ending: list[tuple[str, tasks.Decision]] = []
    progressed: dict[str, str] = {}
    for task, fetch in batch:
        decision = tasks.decide(task, fetch, now, settings)
        if decision.event is not None:
            ending.append((task.task_id, decision))
        elif decision.progressed and decision.snapshot is not None:
            progressed[task.task_id] = decision.snapshot
        values = {f"v_{key}": value for key, value in decision.values.items()}
        values.update(k_task_id=task.task_id, k_lease=task.lease_until)
        shapes.setdefault(tuple(sorted(decision.values)), []).append(values)
    for columns, rows in shapes.items():
        await conn.execute(
            table.update()
            .where(
                table.c.task_id == sa.bindparam("k_task_id"),
                table.c.lease_until == sa.bindparam("k_lease"),
            )
            .values({column: sa.bindparam(f"v_{column}") for column in columns}),
            rows,
        )
    emitted = await outbox.emit_progress(conn, progressed, now)
    for task_id, decision in ending:
        data = decision.snapshot
        if decision.give_up is not None:
            snapshot = (
                await conn.execute(sa.select(table.c.snapshot).where(table.c.task_id == task_id))
            ).scalar()
            data = tasks.given_up_data(task_id, snapshot, decision.give_up)
        assert decision.event is not None and data is not None
        emitted += await outbox.emit_terminal(conn, task_id, decision.event, data, now)
    return emitted
