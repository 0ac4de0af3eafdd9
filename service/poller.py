"""The poller: leases due tasks, asks the upstream once per task, writes what it learnt.

There is one poller per named upstream, each with its own rate limit, concurrency, 429
pause, key state and health, so that one upstream's trouble never slows another's
tasks; each leases only its own upstream's tasks."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import operator_events, outbox, registrations, retention, tasks
from service.config import DEFAULT_UPSTREAM, Settings
from service.db import Database, by_task, prepared
from service.metrics import Metrics
from service.models import Task
from service.pipeline import Pipeline
from service.ratelimit import RateLimiter
from service.upstream import Fetch, Upstream
from service.upstream_health import UpstreamHealth
from service.upstreams import Family

log = logging.getLogger(__name__)
table = Task.__table__  # type: ignore[attr-defined]

CLAIM_BATCH = 200
IDLE_WAIT = 1.0
SWEEP_EVERY = 5.0
PURGE_EVERY = 60.0
AUTH_PROBE_EVERY = 15.0
AUTH_LOG_EVERY = 60.0
# A 403 is one task's problem (new-api hides the tasks of models a key may not use);
# this many different tasks answering 403 with no readable answer between is the key's.
FORBIDDEN_STREAK = 3


class Poller(Pipeline[tasks.Claimed, tuple[tasks.Claimed, Fetch]]):
    """One request per due task of one upstream, within that upstream's rate and
    concurrency limits. ``settings`` are that upstream's (``Settings.scoped``);
    ``families`` (upstream name -> family) reads the tasks the timeout sweep gives up,
    which only the poller with ``housekeeping`` runs, for every upstream."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        upstream: Upstream,
        metrics: Metrics,
        on_events: Callable[[], None],
        families: Mapping[str, Family] | None = None,
        housekeeping: bool = True,
    ) -> None:
        self.name = worker_name(upstream.name)
        # Waking at half the shortest interval keeps a task's lag under half its interval.
        idle = min(IDLE_WAIT, settings.poll_interval_min / 2)
        super().__init__(db, metrics, idle, drain_timeout=settings.upstream_timeout + 5)
        self.settings = settings
        self.upstream = upstream
        self.on_events = on_events
        self.families = dict(families or {upstream.name: upstream.family})
        self.does_housekeeping = housekeeping
        self.limiter = RateLimiter(settings.upstream_rate_limit)
        # A poll cannot outlive its timeout; the margin covers writing its answer.
        self.lease = settings.upstream_timeout + 5
        self.auth_problem: str | None = None
        self.health = UpstreamHealth()
        self._auth_logged = 0.0
        self._next_probe = 0.0
        # Probing a refused key: at the pace of routine polls, between 1 s and 15 s apart.
        self._probe_every = min(AUTH_PROBE_EVERY, max(1.0, settings.poll_interval_max))
        self._next_sweep = 0.0
        self._next_purge = 0.0
        self._forbidden: set[str] = set()  # tasks that answered 403 since the last readable answer
        # Changes of the key's state not yet written as operator events, and how many
        # of them the transaction in progress carries.
        self._key_changes: list[tuple[operator_events.Kind, dict[str, object]]] = []
        self._key_changes_written = 0

    def room(self) -> int:
        room = min(
            self.settings.upstream_max_concurrency - len(self._inflight),
            self.limiter.available(),
            CLAIM_BATCH,
        )
        if self.auth_problem is not None and room > 0:
            # Paused: only a probe now and then, to notice when the key works again.
            return 1 if time.monotonic() >= self._next_probe else 0
        return room

    def wait_hint(self) -> float:
        wait = self.idle_wait
        if self.limiter.available() == 0:
            wait = min(wait, max(0.01, self.limiter.wait()))
        if self.auth_problem is not None:
            wait = min(wait, max(0.01, self._next_probe - time.monotonic()))
        return wait

    async def housekeeping(self, now: float) -> None:
        if not self.does_housekeeping:
            return
        # Each step is due again at its next interval whether it worked or not: a step
        # that keeps failing costs one log line per interval, never the polls between.
        if now >= self._next_purge:
            # Every minute, or faster for retentions under two minutes (tests, trials).
            self._next_purge = now + min(PURGE_EVERY, self.settings.retention / 2)
            await self.chore("retention_purge", self._purge(now))
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            await self.chore("timeout_sweep", self._sweep(now))

    async def _purge(self, now: float) -> None:
        removed = await retention.purge(self.db, now, self.settings.retention)
        if removed:
            log.info("retention: purged %d rows older than %gs", removed, self.settings.retention)

    async def _sweep(self, now: float) -> None:
        timeout = self.settings.task_timeout
        if await registrations.give_up_overdue(self.db, now, timeout, self.families):
            self.on_events()

    async def claim(self, conn: AsyncConnection, now: float, limit: int) -> list[tasks.Claimed]:
        return await claim(conn, now, limit, self.lease, self.upstream.name)

    async def release(self, conn: AsyncConnection, jobs: list[tasks.Claimed]) -> None:
        await conn.execute(
            table.update()
            .where(
                table.c.upstream == sa.bindparam("k_upstream"),
                table.c.task_id == sa.bindparam("k_task"),
                table.c.lease_until == sa.bindparam("k_lease"),
            )
            .values(lease_until=None),
            [
                {"k_upstream": job.upstream, "k_task": job.task_id, "k_lease": job.lease_until}
                for job in jobs
            ],
        )

    def started(self, job: tasks.Claimed, now: float) -> None:
        if self.auth_problem is not None:
            self._next_probe = time.monotonic() + self._probe_every
        self.metrics.poll_lag.observe(max(0.0, now - job.due_at))
        self.limiter.take()

    def ids(self, job: tasks.Claimed) -> dict[str, str]:
        return {"upstream": job.upstream, "task_id": job.task_id}

    def hidden(self) -> list[str]:
        key = self.upstream.secret()
        return [] if key is None else [key]

    def job_of(self, outcome: tuple[tasks.Claimed, Fetch]) -> tasks.Claimed:
        return outcome[0]

    def failed(self, job: tasks.Claimed, reason: str) -> tuple[tasks.Claimed, Fetch]:
        # An upstream error: the task backs off on its own and is never failed for it.
        return job, Fetch("error", detail=reason)

    async def work(self, job: tasks.Claimed) -> tuple[tasks.Claimed, Fetch]:
        fetch = self._judge(job.task_id, await self.upstream.fetch(job.task_id))
        self.metrics.upstream_requests.labels(self.upstream.name, fetch.outcome).inc()
        log.debug("poll %s", fetch.outcome)
        self._note(fetch)
        return job, fetch

    async def record(
        self, conn: AsyncConnection, outcomes: list[tuple[tasks.Claimed, Fetch]], now: float
    ) -> int:
        self._key_changes_written = len(self._key_changes)
        await operator_events.emit(conn, self.settings, self._key_changes, now)
        return await apply(conn, outcomes, now, self.settings, self.upstream.family)

    def committed(self, queued: int) -> None:
        del self._key_changes[: self._key_changes_written]
        self._key_changes_written = 0
        if queued:  # new events: the deliverer should look now
            self.on_events()

    def _judge(self, task_id: str, fetch: Fetch) -> Fetch:
        """A 403 stays this task's problem unless several different tasks answer it in a
        row; then it is the key's, and pauses polling like a 401."""
        if fetch.outcome in ("ok", "not_found"):
            self._forbidden.clear()
        elif fetch.outcome == "forbidden":
            self._forbidden.add(task_id)
            if len(self._forbidden) >= FORBIDDEN_STREAK:
                detail = f"upstream refused our key (403 for {len(self._forbidden)} tasks in a row)"
                return dataclasses.replace(fetch, outcome="unauthorized", detail=detail)
        return fetch

    def _note(self, fetch: Fetch) -> None:
        self.health.record(fetch, time.time())
        if fetch.outcome == "rate_limited":
            streak = self.limiter.streak
            pause = self.limiter.rate_limited(fetch.retry_after)
            if self.limiter.streak != streak:  # a new pause, not its echo from requests in flight
                log.warning(
                    "upstream %s rate limit (429): pausing all its polls for %.1fs",
                    self.upstream.name, pause,
                )  # fmt: skip
            return
        if fetch.outcome == "forbidden":  # answered, about one task: the upstream is fine
            self.limiter.succeeded()
            return
        if fetch.outcome not in ("ok", "not_found"):
            self.limiter.settled()
        if fetch.outcome == "unauthorized":
            if self.auth_problem is None:
                self._key_change(operator_events.Kind.KEY_REFUSED, fetch)
            self.auth_problem = fetch.detail
            if time.monotonic() - self._auth_logged >= AUTH_LOG_EVERY:
                self._auth_logged = time.monotonic()
                log.error(
                    "upstream %s: %s: polling paused until the key works",
                    self.upstream.name, fetch.detail,
                )  # fmt: skip
        elif fetch.outcome in ("ok", "not_found"):
            self.limiter.succeeded()
            if self.auth_problem is not None:
                log.info("upstream %s accepts our key again: polling resumes", self.upstream.name)
                self.auth_problem = None
                self._key_change(operator_events.Kind.KEY_ACCEPTED, fetch)

    def _key_change(self, kind: operator_events.Kind, fetch: Fetch) -> None:
        """Note an operator event; written with the batch this answer is recorded in."""
        data: dict[str, object] = {"upstream": self.upstream.name, "status_code": fetch.status_code}
        if kind == operator_events.Kind.KEY_REFUSED:
            data["message"] = fetch.detail  # says which status, never the key
        self._key_changes.append((kind, data))


def worker_name(upstream: str) -> str:
    """The poller's name in logs, metrics and /readyz: ``poller``, or ``poller:NAME``."""
    return "poller" if upstream == DEFAULT_UPSTREAM else f"poller:{upstream}"


_NOW = sa.bindparam("b_now", type_=sa.Float)
_UPSTREAM: sa.BindParameter[str] = sa.bindparam("b_upstream", type_=sa.String)
# The poller's hot statements are built once and run prepared (``db.prepared``).
_DUE = (
    sa.select(table.c.task_id)
    .where(
        table.c.upstream == _UPSTREAM,
        table.c.state == "watching",
        table.c.next_poll_at <= _NOW,
        sa.or_(table.c.lease_until.is_(None), table.c.lease_until < _NOW),
    )
    .order_by(table.c.next_poll_at)
    .limit(sa.bindparam("b_limit", type_=sa.Integer))
)
_CLAIM = prepared(
    table.update()
    .where(
        table.c.upstream == _UPSTREAM,
        table.c.task_id.in_(_DUE.with_for_update(skip_locked=True).scalar_subquery()),
    )
    .values(lease_until=sa.bindparam("b_until"))
    .returning(
        table.c.upstream,
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
_LEASES = prepared(
    sa.select(table.c.upstream, table.c.task_id, table.c.lease_until)
    .where(
        table.c.upstream == _UPSTREAM,
        table.c.task_id.in_(sa.bindparam("b_tasks", expanding=True)),
    )
    .order_by(table.c.upstream, table.c.task_id)  # rows locked in key order, as everywhere
    .with_for_update()  # no other worker takes them over before we commit
)
_WRITES: dict[tuple[str, ...], sa.Update] = {}


def _write(columns: tuple[str, ...]) -> sa.Update:
    """The update of a polled task that sets ``columns``, for the holder of its lease;
    built once per set of columns (a poll's answer sets one of a few)."""
    found = _WRITES.get(columns)
    if found is None:
        found = _WRITES[columns] = prepared(
            table.update()
            .where(
                table.c.upstream == sa.bindparam("k_upstream"),
                table.c.task_id == sa.bindparam("k_task_id"),
                table.c.lease_until == sa.bindparam("k_lease"),
            )
            .values({column: sa.bindparam(f"v_{column}") for column in columns})
        )
    return found


def due_tasks(now: float, limit: int, upstream: str = DEFAULT_UPSTREAM) -> sa.Select[tuple[str]]:
    """One upstream's most overdue tasks first: a fair rotation when the budget is short,
    with never-polled tasks (due at 0) ahead of all. Served by ix_tasks_due, never a scan."""
    return _DUE.params(b_now=now, b_limit=limit, b_upstream=upstream)


async def claim(
    conn: AsyncConnection,
    now: float,
    limit: int,
    lease: float,
    upstream: str = DEFAULT_UPSTREAM,
) -> list[tasks.Claimed]:
    """Lease up to ``limit`` due tasks of one upstream."""
    lease_until = now + lease
    values = {"b_now": now, "b_limit": limit, "b_upstream": upstream, "b_until": lease_until}
    rows = (await conn.execute(_CLAIM, values)).all()
    return [
        tasks.Claimed(
            upstream=row.upstream,
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
    family: Family | None = None,
) -> int:
    """Write a batch of poll answers of one upstream (read in its ``family``; its
    settings) and the events they cause, in one transaction."""
    if not batch:
        return 0
    upstream = batch[0][0].upstream
    family = family or outbox.family_of({}, upstream)
    names = sorted({task.task_id for task, _ in batch})
    leases: dict[tuple[str, str], float | None] = {
        (row.upstream, row.task_id): row.lease_until
        for row in await conn.execute(_LEASES, {"b_upstream": upstream, "b_tasks": names})
    }
    # Only the holder of the lease may write: an expired lease means another worker
    # owns the task now, and its answer counts instead.
    batch = [(task, fetch) for task, fetch in batch if leases.get(task.key) == task.lease_until]
    shapes: dict[tuple[str, ...], list[dict[str, object]]] = {}
    ending: list[tuple[tasks.Claimed, tasks.Decision]] = []
    progressed: dict[tuple[str, str], str] = {}
    for task, fetch in batch:
        decision = tasks.decide(task, fetch, now, settings, family)
        if decision.event is not None:
            ending.append((task, decision))
        elif decision.progressed and decision.snapshot is not None:
            progressed[task.key] = decision.snapshot
        values = {f"v_{key}": value for key, value in decision.values.items()}
        values.update(k_upstream=task.upstream, k_task_id=task.task_id, k_lease=task.lease_until)
        shapes.setdefault(tuple(sorted(decision.values)), []).append(values)
    for columns, rows in shapes.items():
        await conn.execute(_write(columns), rows)
    emitted = await outbox.emit_progress(conn, progressed, now, family)
    given_up = [task.key for task, decision in ending if decision.give_up is not None]
    snapshots: dict[tuple[str, str], str | None] = {}
    if given_up:  # their webhook carries the last snapshot we kept
        query = sa.select(table.c.upstream, table.c.task_id, table.c.snapshot).where(
            by_task(table.c.upstream, table.c.task_id, given_up)
        )
        snapshots = {(row.upstream, row.task_id): row.snapshot for row in await conn.execute(query)}
    ends: dict[tuple[str, str], tuple[str, str]] = {}
    for task, decision in ending:
        data = decision.snapshot
        ids = {"task_id": task.task_id, "upstream": task.upstream}
        if decision.give_up is not None:
            data = tasks.given_up_data(
                task.task_id, snapshots.get(task.key), decision.give_up, decision.error
            )
            log.warning("task given up: %s", decision.give_up, extra=ids)
        else:
            log.info("task ended: %s", decision.event, extra=ids)
        assert decision.event is not None and data is not None
        ends[task.key] = (decision.event, data)
    families = {upstream: family}
    return emitted + await outbox.emit_terminal(conn, ends, now, families)
