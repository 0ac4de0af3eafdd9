"""The outbox: events written with the state change that causes them, claimed with leases."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import ids, snapshot, upstreams
from service.db import by_task, constant, prepared, unindexed
from service.models import TERMINAL_EVENTS, Attempt, Event, Registration, compact_json
from service.upstreams import Family, openai_video

events = Event.__table__  # type: ignore[attr-defined]
registrations = Registration.__table__  # type: ignore[attr-defined]
attempts = Attempt.__table__  # type: ignore[attr-defined]

FIRST, RETRY = 0, 1
PROGRESS = "video.progress"
DEFAULT_UPSTREAM = "default"
TaskKey = tuple[str, str]  # (upstream, task_id): what identifies a task


def family_of(families: Mapping[str, Family], upstream: str) -> Family:
    """The family of a named upstream; openai-video for a name no longer configured
    (its tasks are only ever given up, and their data is what was last seen)."""
    return families.get(upstream) or openai_video.FAMILY


def body(
    event_id: str,
    event_type: str,
    created: float,
    registration_id: str,
    metadata: Any,
    data: str,
    task_id: str,
    upstream: str = DEFAULT_UPSTREAM,
    family: Family = openai_video.FAMILY,
) -> str:
    """The webhook body: ``result`` is the upstream family's reading of ``data``, the same
    shape for every family, and ``data`` is spliced in as the upstream sent it (clean
    UTF-8 JSON whatever bytes came in)."""
    stamp = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parsed = snapshot.parse(data)
    video = parsed.value if parsed is not None and isinstance(parsed.value, dict) else None
    head = compact_json(
        {
            "id": event_id,
            "type": event_type,
            "timestamp": stamp,
            "registration_id": registration_id,
            "task_id": task_id,
            "upstream": upstream,
            "metadata": metadata,
            "result": upstreams.result(family, video),
        }
    )
    return head[:-1] + ',"data":' + (parsed.text if parsed is not None else "null") + "}"


def _row(
    registration_id: str,
    metadata: Any,
    event_type: str,
    data: str,
    now: float,
    key: TaskKey,
    family: Family,
) -> dict[str, Any]:
    event_id = ids.new_id("evt")
    upstream, task_id = key
    text = body(
        event_id, event_type, now, registration_id, metadata, data, task_id, upstream, family
    )
    return {
        "id": event_id,
        "registration_id": registration_id,
        "type": event_type,
        "body": text,
        "state": "pending",
        "attempts": 0,
        "lane": FIRST,
        "next_attempt_at": now,
        "lease_until": None,
        "created_at": now,
    }


async def _drop_pending_progress(
    conn: AsyncConnection, registration_ids: Sequence[str], now: float
) -> None:
    """Coalesce: a newer snapshot replaces progress events that are waiting, not in flight."""
    if registration_ids:
        await conn.execute(drop_progress(registration_ids, now))


def drop_progress(registration_ids: Sequence[str], now: float) -> sa.Update:
    statement: sa.Update = (
        events.update()
        .where(
            events.c.registration_id.in_(registration_ids),
            events.c.type == "video.progress",
            unindexed(events.c.state) == "pending",
            sa.or_(events.c.lease_until.is_(None), events.c.lease_until < now),
        )
        .values(state="dropped")
    )
    return statement


async def emit_terminal(
    conn: AsyncConnection,
    ends: dict[TaskKey, tuple[str, str]],
    now: float,
    families: Mapping[str, Family],
) -> int:
    """Give every active registration of the tasks that ended ((upstream, task id) ->
    event type and data) its terminal event, or end it; one query and one insert for the
    whole batch. ``families`` maps upstream names to the family that reads their data."""
    if not ends:
        return 0
    has_terminal = (
        sa.select(events.c.seq)
        .where(
            events.c.registration_id == registrations.c.id,
            events.c.type.in_(TERMINAL_EVENTS),
        )
        .exists()
    )
    rows = (
        await conn.execute(
            sa.select(
                registrations.c.id,
                registrations.c.events,
                registrations.c.metadata,
                registrations.c.upstream,
                registrations.c.task_id,
            ).where(
                by_task(registrations.c.upstream, registrations.c.task_id, ends),
                registrations.c.state == constant("active"),
                ~has_terminal,
            )
        )
    ).all()
    return await _emit_terminal_rows(
        conn,
        [
            (reg_id, wanted, meta, *ends[(up, task_id)], (up, task_id), family_of(families, up))
            for reg_id, wanted, meta, up, task_id in rows
        ],
        now,
    )


async def emit_for_registration(
    conn: AsyncConnection,
    registration_id: str,
    wanted: Sequence[str],
    metadata: Any,
    event_type: str,
    data: str,
    now: float,
    task_id: str,
    upstream: str = DEFAULT_UPSTREAM,
    family: Family = openai_video.FAMILY,
) -> int:
    """A registration that arrives after its task ended gets the terminal event at once."""
    row = (registration_id, list(wanted), metadata, event_type, data, (upstream, task_id), family)
    return await _emit_terminal_rows(conn, [row], now)


async def _emit_terminal_rows(conn: AsyncConnection, rows: Iterable[Any], now: float) -> int:
    """Rows of (registration id, events wanted, metadata, event type, data, task key,
    family)."""
    new_rows, ended = [], []
    for registration_id, wanted, metadata, event_type, data, key, family in rows:
        if event_type in wanted:
            new_rows.append(_row(registration_id, metadata, event_type, data, now, key, family))
        else:
            ended.append(registration_id)
    # A progress event not yet accepted when the terminal one is ready is dropped.
    await _drop_pending_progress(conn, [row["registration_id"] for row in new_rows], now)
    if new_rows:
        await conn.execute(events.insert(), new_rows)
    await _set_state(conn, ended, ("active",), "ended", now)
    return len(new_rows)


async def emit_progress(
    conn: AsyncConnection, snapshots: dict[TaskKey, str], now: float, family: Family
) -> int:
    """Queue ``video.progress`` for registrations that asked, coalescing what is pending;
    ``snapshots`` are tasks of upstreams of one ``family``."""
    if not snapshots:
        return 0
    rows = (
        await conn.execute(
            sa.select(
                registrations.c.id,
                registrations.c.upstream,
                registrations.c.task_id,
                registrations.c.events,
                registrations.c.metadata,
            ).where(
                by_task(registrations.c.upstream, registrations.c.task_id, snapshots),
                registrations.c.state == constant("active"),
            )
        )
    ).all()
    new_rows = [
        _row(
            reg_id, metadata, "video.progress", snapshots[(up, task_id)], now, (up, task_id), family
        )
        for reg_id, up, task_id, wanted, metadata in rows
        if "video.progress" in wanted
    ]
    await _drop_pending_progress(conn, [row["registration_id"] for row in new_rows], now)
    if new_rows:
        await conn.execute(events.insert(), new_rows)
    return len(new_rows)


@dataclass(slots=True)
class Claimed:
    """An event leased for one delivery attempt."""

    seq: int
    id: str
    registration_id: str
    type: str
    body: str
    attempts: int
    created_at: float
    lease_until: float
    callback_url: str = ""
    task_id: str = ""
    upstream: str = DEFAULT_UPSTREAM
    lane: int = FIRST
    owner: str = ""  # the registration's key owner: whose secrets sign it
    secrets: tuple[str, ...] = ()  # what signs this attempt, newest first
    headers: dict[str, str] = field(default_factory=dict)  # the registration's custom ones
    first_attempt_at: float | None = None
    origin: str = ""  # scheme://host:port of the callback URL


def _keys(name: str) -> sa.BindParameter[Any]:
    """A list of keys bound at execution, as ``IN (…)``."""
    return sa.bindparam(name, expanding=True)


_NOW = sa.bindparam("b_now", type_=sa.Float)
_CLAIMED_COLUMNS = (
    events.c.seq,
    events.c.id,
    events.c.registration_id,
    events.c.type,
    events.c.body,
    events.c.attempts,
    events.c.created_at,
    events.c.first_attempt_at,
)


def _due() -> sa.Select[tuple[int]]:
    earlier = events.alias("earlier")
    blocked = (
        sa.select(earlier.c.seq)
        .where(
            earlier.c.registration_id == events.c.registration_id,
            earlier.c.seq < events.c.seq,
            sa.or_(earlier.c.state == "pending", earlier.c.lease_until > _NOW),
        )
        .exists()
    )
    return (
        sa.select(events.c.seq)
        .where(
            events.c.state == "pending",
            events.c.lane == sa.bindparam("b_lane"),
            events.c.next_attempt_at <= _NOW,
            sa.or_(events.c.lease_until.is_(None), events.c.lease_until < _NOW),
            ~blocked,
        )
        .order_by(events.c.next_attempt_at)
        .limit(sa.bindparam("b_limit", type_=sa.Integer))
    )


# The hot statements of the delivery worker are built once, with their values bound at
# execution: building and hashing a statement cost more than SQLite running it (profiled).
_DUE = _due()
_CLAIM = prepared(
    events.update()
    .where(events.c.seq.in_(_DUE.with_for_update(skip_locked=True).scalar_subquery()))
    .values(lease_until=sa.bindparam("b_until"))
    .returning(*_CLAIMED_COLUMNS)
)
_TARGETS = prepared(
    sa.select(
        registrations.c.id,
        registrations.c.callback_url,
        registrations.c.task_id,
        registrations.c.upstream,
        registrations.c.owner,
        registrations.c.headers,
    ).where(registrations.c.id.in_(_keys("b_ids")))
)


def due_events(now: float, limit: int, lane: int) -> sa.Select[tuple[int]]:
    """Due events of one lane, oldest due first, none behind an earlier event of its
    registration that is still pending or in flight. Served by indexes, never a scan."""
    return _DUE.params(b_now=now, b_limit=limit, b_lane=lane)


async def claim(
    conn: AsyncConnection, now: float, limit: int, lease: float, lane: int
) -> list[Claimed]:
    """Lease up to ``limit`` due events of one lane, at most one per registration, in order."""
    lease_until = now + lease
    rows = await conn.execute(
        _CLAIM, {"b_now": now, "b_limit": limit, "b_lane": lane, "b_until": lease_until}
    )
    claimed = [
        Claimed(
            seq=row.seq,
            id=row.id,
            registration_id=row.registration_id,
            type=row.type,
            body=row.body,
            attempts=row.attempts,
            created_at=row.created_at,
            lease_until=lease_until,
            lane=lane,
            first_attempt_at=row.first_attempt_at,
        )
        for row in rows.all()
    ]
    if claimed:
        wanted = sorted({event.registration_id for event in claimed})
        targets = {row.id: row for row in await conn.execute(_TARGETS, {"b_ids": wanted})}
        for event in claimed:
            target = targets[event.registration_id]
            event.callback_url, event.task_id = target.callback_url, target.task_id
            event.upstream = target.upstream
            event.owner = target.owner
            event.headers = target.headers or {}
    claimed.sort(key=lambda event: event.seq)
    return claimed


@dataclass(slots=True)
class Result:
    """What one delivery attempt came to."""

    event: Claimed
    started_at: float
    duration_ms: int
    status_code: int | None
    error: str | None
    accepted: bool
    gone: bool
    next_attempt_at: float | None  # None: dead (or accepted)


_LEASES = prepared(
    sa.select(events.c.seq, events.c.lease_until, events.c.attempts)
    .where(events.c.seq.in_(_keys("b_seqs")))
    .with_for_update()
)
# One attempt ends: counted, its lease given back, and a pending event takes its new
# state (delivered, dead, or pending for its retry, in the retry lane). Every column
# reads the row as it was, so ``state`` is the old one in each CASE.
_pending = events.c.state == "pending"
_ATTEMPTED = prepared(
    events.update()
    .where(events.c.seq == sa.bindparam("b_seq"), events.c.lease_until == sa.bindparam("b_lease"))
    .values(
        attempts=events.c.attempts + 1,
        lease_until=None,
        state=sa.case((_pending, sa.bindparam("b_state")), else_=events.c.state),
        next_attempt_at=sa.case(
            (_pending, sa.bindparam("b_next", type_=sa.Float)), else_=events.c.next_attempt_at
        ),
        lane=sa.case((_pending, RETRY), else_=events.c.lane),
    )
)
# A progress event that failed while a later event of its registration waits is dropped,
# not retried: progress is best effort, and the later one must not wait on its retries.
_later = events.alias("later")
_SUPERSEDED = prepared(
    events.update()
    .where(
        events.c.seq.in_(_keys("b_seqs")),
        unindexed(events.c.state) == "pending",
        sa.select(_later.c.seq)
        .where(_later.c.registration_id == events.c.registration_id, _later.c.seq > events.c.seq)
        .exists(),
    )
    .values(state="dropped")
)
_SET_STATE = prepared(
    registrations.update()
    .where(
        registrations.c.id.in_(_keys("b_ids")),
        unindexed(registrations.c.state).in_(_keys("b_from")),
    )
    .values(state=sa.bindparam("b_to"), updated_at=_NOW)
)


async def record(conn: AsyncConnection, results: Sequence[Result], now: float) -> list[Result]:
    """Write the outcome of finished attempts: the attempt log, the event and registration.
    Only the holder of an event's lease writes: a worker paused past its lease (a long
    outage, a stalled process) finds the event taken over and leaves it to the new holder,
    whose lease it must not clear and whose attempt count it must not set back. Returns
    the results written (those whose lease was still held)."""
    if not results:
        return []
    leases = await _leases(conn, results)
    results = [r for r in results if leases.get(r.event.seq, (None,))[0] == r.event.lease_until]
    if not results:
        return []
    await conn.execute(
        attempts.insert(),
        [
            {
                "id": ids.new_id("att"),
                "registration_id": r.event.registration_id,
                "event_id": r.event.id,
                "type": r.event.type,
                "attempt": leases[r.event.seq][1] + 1,
                "status_code": r.status_code,
                "error": r.error,
                "duration_ms": r.duration_ms,
                "created_at": r.started_at,
            }
            for r in results
        ],
    )
    await conn.execute(
        _ATTEMPTED,
        [
            {
                "b_seq": r.event.seq,
                "b_lease": r.event.lease_until,
                "b_state": _event_state(r),
                "b_next": r.next_attempt_at if r.next_attempt_at is not None else now,
            }
            for r in results
        ],
    )
    unsent = [r.event.seq for r in results if r.event.type == PROGRESS and not r.accepted]
    if unsent:
        await conn.execute(_SUPERSEDED, {"b_seqs": unsent})
    terminal = [r for r in results if r.event.type in TERMINAL_EVENTS]
    delivered = [r.event.registration_id for r in terminal if r.accepted]
    dead = [
        r.event.registration_id
        for r in terminal
        if not r.accepted and not r.gone and r.next_attempt_at is None
    ]
    gone = [r.event.registration_id for r in results if r.gone]
    await _set_state(conn, delivered, ("active", "failed"), "delivered", now)
    # failed -> failed too: a recovered event that dies again marks the time it died.
    await _set_state(conn, dead, ("active", "failed"), "failed", now)
    await _set_state(conn, gone, ("active", "delivered"), "failed", now)
    if gone:
        await conn.execute(drop_pending(gone))
    return list(results)


async def _leases(conn: AsyncConnection, results: Sequence[Result]) -> dict[int, tuple[Any, int]]:
    """The lease and attempt count of the events of ``results``, locked until we commit
    so that no other worker takes them over meanwhile: seq -> (lease_until, attempts)."""
    rows = await conn.execute(_LEASES, {"b_seqs": [r.event.seq for r in results]})
    return {row.seq: (row.lease_until, row.attempts) for row in rows}


def _event_state(result: Result) -> str:
    if result.accepted:
        return "delivered"
    if result.gone or result.next_attempt_at is None:
        return "dead"
    return "pending"


async def _set_state(
    conn: AsyncConnection, ids_: Sequence[str], from_states: Sequence[str], to: str, now: float
) -> None:
    if ids_:
        await conn.execute(*set_state(ids_, from_states, to, now))


def set_state(
    ids_: Sequence[str], from_states: Sequence[str], to: str, now: float
) -> tuple[sa.Update, dict[str, Any]]:
    """The statement that moves registrations found by id from one of ``from_states`` to
    ``to``, and its values."""
    return _SET_STATE, {"b_ids": sorted(set(ids_)), "b_from": list(from_states), "b_to": to,
                        "b_now": now}  # fmt: skip


def drop_pending(registration_ids: Sequence[str]) -> sa.Update:
    """Drop what is still waiting for registrations that will take nothing more."""
    statement: sa.Update = (
        events.update()
        .where(
            events.c.registration_id.in_(registration_ids),
            unindexed(events.c.state) == "pending",
        )
        .values(state="dropped")
    )
    return statement


_POSTPONE = prepared(
    events.update()
    .where(events.c.seq == sa.bindparam("b_seq"))
    .values(next_attempt_at=sa.bindparam("b_until"), lease_until=None)
)
# Rows another worker holds are skipped, never waited for: waking runs after the
# circuits are written, and that worker may be waiting for them.
_WAKE = prepared(
    events.update()
    .where(
        events.c.seq.in_(
            sa.select(events.c.seq)
            .where(
                events.c.seq.in_(_keys("b_seqs")),
                unindexed(events.c.state) == "pending",
                events.c.next_attempt_at > _NOW,
                sa.or_(events.c.lease_until.is_(None), events.c.lease_until < _NOW),
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(next_attempt_at=_NOW)
)
_MARK_SENT = prepared(
    events.update()
    .where(events.c.seq.in_(_keys("b_seqs")), events.c.first_attempt_at.is_(None))
    .values(first_attempt_at=_NOW)
)
_RELEASE = prepared(
    events.update()
    .where(events.c.seq == sa.bindparam("b_seq"), events.c.lease_until == sa.bindparam("b_lease"))
    .values(lease_until=None)
)


async def postpone(conn: AsyncConnection, until: Sequence[tuple[int, float]]) -> None:
    """Give back claimed events, due again later; no attempt is counted: (seq, when)."""
    if until:
        await conn.execute(_POSTPONE, [{"b_seq": seq, "b_until": when} for seq, when in until])


async def wake(conn: AsyncConnection, seqs: Sequence[int], now: float) -> None:
    """Make postponed events due now, unless they were sent or taken meanwhile."""
    if seqs:
        await conn.execute(_WAKE, {"b_seqs": sorted(set(seqs)), "b_now": now})


async def mark_sent(conn: AsyncConnection, seqs: Sequence[int], now: float) -> None:
    """Start the retry window of events about to be sent for the first time."""
    if seqs:
        await conn.execute(_MARK_SENT, {"b_seqs": list(seqs), "b_now": now})


async def release(conn: AsyncConnection, claimed: Sequence[Claimed]) -> None:
    """Give back leases of events that were claimed but not attempted, those still ours."""
    if claimed:
        await conn.execute(
            _RELEASE, [{"b_seq": event.seq, "b_lease": event.lease_until} for event in claimed]
        )
