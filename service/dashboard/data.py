"""What the dashboard shows, read from the database for one caller (one API key)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from service import callbacks, circuits
from service.dashboard import chart
from service.db import Database
from service.models import Attempt, Event, Registration, Task

tasks = Task.__table__  # type: ignore[attr-defined]
registrations = Registration.__table__  # type: ignore[attr-defined]
events = Event.__table__  # type: ignore[attr-defined]
attempts = Attempt.__table__  # type: ignore[attr-defined]

ROWS = 100
FAILURE_WINDOW = 3600.0

# The filter menu: name → condition on the registration's state, the state each row
# shows beside its registration id (the task's own status has its column). One meaning,
# said on the page by FILTER_HELP.
FILTERS: dict[str, Any] = {
    "all": sa.true(),
    "active": registrations.c.state == "active",
    "delivered": registrations.c.state == "delivered",
    "failed": registrations.c.state == "failed",
    "ended": registrations.c.state == "ended",
    "cancelled": registrations.c.state == "cancelled",
}
FILTER_HELP = {
    "all": "every registration",
    "active": "waiting for its task to end, or for the receiver to accept the webhook",
    "delivered": "the receiver accepted the terminal webhook (video.completed or video.failed)",
    "failed": "the terminal webhook died after all retries, or the receiver answered 410",
    "ended": "the task ended with an event the registration did not ask for; nothing was sent",
    "cancelled": "cancelled by the client; no webhook follows",
}


@dataclass(slots=True, frozen=True)
class Counters:
    active_tasks: int
    pending_deliveries: int
    failures_last_hour: int


@dataclass(slots=True, frozen=True)
class Row:
    """One registration with its task, as a line of the task table."""

    registration_id: str
    registration_state: str
    task_id: str
    upstream: str
    status: str
    progress: int | None
    callback_url: str
    metadata: str
    created_at: float
    updated_at: float | None


@dataclass(slots=True, frozen=True)
class Detail:
    row: Row
    events: list[str]
    last_error: str | None
    next_attempt_at: float | None = None  # of the earliest event still to be sent


@dataclass(slots=True, frozen=True)
class AttemptRow:
    attempt: int
    type: str
    status_code: int | None
    error: str | None
    duration_ms: int
    created_at: float


# A registration's task: its upstream and id.
_TASK_OF = sa.and_(
    tasks.c.task_id == registrations.c.task_id, tasks.c.upstream == registrations.c.upstream
)


def _mine(owner: str) -> Any:
    return registrations.c.owner == owner


async def counters(db: Database, owner: str, now: float) -> Counters:
    joined = registrations.join(tasks, _TASK_OF)
    active = sa.select(sa.func.count()).select_from(
        sa.select(registrations.c.upstream, registrations.c.task_id)
        .select_from(joined)
        .where(_mine(owner), registrations.c.state == "active", tasks.c.state == "watching")
        .distinct()
        .subquery()
    )
    pending = (
        sa.select(sa.func.count())
        .select_from(events.join(registrations, registrations.c.id == events.c.registration_id))
        .where(_mine(owner), events.c.state == "pending")
    )
    failed = (
        sa.select(sa.func.count())
        .select_from(attempts.join(registrations, registrations.c.id == attempts.c.registration_id))
        .where(
            _mine(owner),
            attempts.c.created_at > now - FAILURE_WINDOW,
            sa.or_(
                attempts.c.status_code.is_(None),
                attempts.c.status_code < 200,
                attempts.c.status_code >= 300,
            ),
        )
    )
    async with db.read() as conn:
        values = [
            int((await conn.execute(query)).scalar_one()) for query in (active, pending, failed)
        ]
    return Counters(*values)


_ROW_COLUMNS = (
    registrations.c.id,
    registrations.c.state,
    registrations.c.task_id,
    registrations.c.upstream,
    registrations.c.callback_url,
    registrations.c.metadata,
    registrations.c.events,
    registrations.c.created_at,
    tasks.c.state.label("task_state"),
    tasks.c.outcome,
    tasks.c.raw_status,
    tasks.c.progress,
    tasks.c.snapshot_at,
)


def _row(found: Any) -> Row:
    return Row(
        registration_id=found.id,
        registration_state=found.state,
        task_id=found.task_id,
        upstream=found.upstream,
        status=_status(found),
        progress=found.progress,
        callback_url=found.callback_url,
        metadata=json.dumps(found.metadata, ensure_ascii=False) if found.metadata else "",
        created_at=found.created_at,
        updated_at=found.snapshot_at,
    )


def _status(found: Any) -> str:
    if found.task_state == "given_up":
        return "given up"
    if found.raw_status:
        return str(found.raw_status).lower()
    return "not polled yet" if found.task_state == "watching" else str(found.task_state)


async def rows(db: Database, owner: str, which: str) -> list[Row]:
    """The caller's newest registrations with their tasks, filtered by the registration's
    state (FILTERS)."""
    query = (
        sa.select(*_ROW_COLUMNS)
        .select_from(registrations.join(tasks, _TASK_OF))
        .where(_mine(owner), FILTERS[which])
        .order_by(registrations.c.id.desc())
        .limit(ROWS)
    )
    async with db.read() as conn:
        return [_row(found) for found in await conn.execute(query)]


async def detail(
    db: Database, owner: str, registration_id: str
) -> tuple[Detail, list[AttemptRow]] | None:
    """One registration of the caller's, with every attempt to deliver to it, newest first."""
    query = (
        sa.select(*_ROW_COLUMNS)
        .select_from(registrations.join(tasks, _TASK_OF))
        .where(_mine(owner), registrations.c.id == registration_id)
    )
    tries = (
        sa.select(attempts)
        .where(attempts.c.registration_id == registration_id)
        .order_by(attempts.c.id.desc())
        .limit(ROWS)
    )
    upcoming = sa.select(sa.func.min(events.c.next_attempt_at)).where(
        events.c.registration_id == registration_id, events.c.state == "pending"
    )
    async with db.read() as conn:
        found = (await conn.execute(query)).first()
        if found is None:
            return None
        made = [
            AttemptRow(a.attempt, a.type, a.status_code, a.error, a.duration_ms, a.created_at)
            for a in await conn.execute(tries)
        ]
        next_at = (await conn.execute(upcoming)).scalar_one_or_none()
    last_error = next((a.error for a in made if a.error), None)
    return Detail(_row(found), list(found.events), last_error, next_at), made


def _minute_of(db: Database, when: Any, start: float) -> Any:
    """The index of the minute ``when`` falls in, counted from ``start``."""
    offset = (when - start) / 60.0
    # SQLite's CAST truncates (offsets here are never negative); PostgreSQL's rounds.
    return sa.cast(offset, sa.Integer) if db.is_sqlite else sa.func.floor(offset)


async def last_hour(db: Database, owner: str, now: float, tries: int) -> list[chart.Minute]:
    """The caller's webhook attempts of the last hour, per minute, by outcome, and the
    average time from each accepted event being written to its acceptance. Accepted:
    2xx; dead: an attempt after which its event was given up (a 410, or the last of
    ``tries``: the first attempt and each retry of the schedule; a recovered event
    counts its tries afresh); failed: the rest. Read from the attempt alone, so what
    a minute showed stays as it was when an event is later recovered."""
    starts = chart.window(now)
    bucket = _minute_of(db, attempts.c.created_at, starts[0]).label("bucket")
    # An attempt that was never sent (no status: refused, timed out, or waiting past its
    # retry window behind an open circuit) is no answer: 0, so it is never NULL-ignored.
    code = sa.func.coalesce(attempts.c.status_code, 0)
    accepted = sa.and_(code >= 200, code < 300)
    dead = sa.and_(~accepted, sa.or_(code == 410, attempts.c.attempt >= tries))
    latency = attempts.c.created_at + attempts.c.duration_ms / 1000.0 - events.c.created_at
    query = (
        sa.select(
            bucket,
            sa.func.count().label("total"),
            sa.func.sum(sa.case((accepted, 1), else_=0)).label("accepted"),
            sa.func.sum(sa.case((dead, 1), else_=0)).label("dead"),
            sa.func.avg(sa.case((accepted, latency), else_=None)).label("latency"),
        )
        .select_from(
            attempts.join(
                registrations, registrations.c.id == attempts.c.registration_id
            ).outerjoin(events, events.c.id == attempts.c.event_id)
        )
        .where(_mine(owner), attempts.c.created_at >= starts[0])
        .group_by(bucket)
    )
    async with db.read() as conn:
        found = {int(row.bucket): row for row in await conn.execute(query)}
    minutes = []
    for index, start in enumerate(starts):
        row = found.get(index)
        if row is None:
            minutes.append(chart.Minute(start))
            continue
        good, gone = int(row.accepted or 0), int(row.dead or 0)
        latency = None if row.latency is None else max(0.0, float(row.latency))
        minutes.append(chart.Minute(start, good, int(row.total) - good - gone, gone, latency))
    return minutes


@dataclass(frozen=True, slots=True)
class OpenCircuit:
    """A receiver origin whose webhooks wait for a probe (unix seconds)."""

    origin: str
    opened_at: float
    probe_at: float


async def open_circuits(db: Database, owner: str, keyed: bool) -> list[OpenCircuit]:
    """Open circuits, longest open first. With API keys, only the origins of the key's
    own callbacks: another client's receivers are not this key's to see."""
    async with db.read() as conn:
        found = await circuits.opened(conn)
        if found and keyed:
            urls = await conn.execute(
                sa.select(registrations.c.callback_url)
                .where(registrations.c.owner == owner)
                .distinct()
                .limit(10_000)
            )
            mine = {callbacks.origin(url) for (url,) in urls}
            found = [row for row in found if row[0] in mine]
    return [OpenCircuit(*row) for row in found]
