"""Registrations: create, read, list, cancel and redeliver, with the contract's state rules."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from service import headers, ids, outbox, ownership, snapshot, tasks
from service.db import Database, by_task, constant, prepared
from service.models import (
    DEFAULT_UPSTREAM,
    TERMINAL_EVENTS,
    Attempt,
    AttemptPublic,
    Registration,
    RegistrationCreate,
    RegistrationPublic,
    Task,
)
from service.upstreams import Family, openai_video

registrations = Registration.__table__  # type: ignore[attr-defined]
task_table = Task.__table__  # type: ignore[attr-defined]
attempts = Attempt.__table__  # type: ignore[attr-defined]
log = logging.getLogger(__name__)


class Conflict(Exception):
    """The request conflicts with the registration's current state."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NotFound(Exception):
    """No such registration for this key."""


class Foreign(Exception):
    """Another key created this task through status-proxy; it is not this key's to watch."""


class Vanished(Exception):
    """The task row was purged while this registration waited for it."""


@dataclass(slots=True)
class Created:
    registration: RegistrationPublic
    created: bool
    events: int  # outbox rows written, so the delivery worker can be woken


def dedupe_key(owner: str, upstream: str, task_id: str, callback_url: str) -> str:
    """One active registration per key, task (upstream and id) and URL. The default
    upstream's keep the form they had before there were several upstreams, so that the
    active registrations written then are still found."""
    parts = [owner, task_id, callback_url]
    if upstream != DEFAULT_UPSTREAM:
        parts.insert(1, upstream)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


_COLUMNS = (
    registrations.c.id,
    registrations.c.upstream,
    registrations.c.task_id,
    registrations.c.callback_url,
    registrations.c.events,
    registrations.c.metadata,
    registrations.c.headers,
    registrations.c.state,
    registrations.c.created_at,
    task_table.c.snapshot,
)


# Written into the SQL: a bound state makes SQLite plan the statement afresh on each run.
_ACTIVE = constant("active")
_TASK_OF = sa.and_(
    task_table.c.task_id == registrations.c.task_id,
    task_table.c.upstream == registrations.c.upstream,
)


def _select() -> sa.Select[Any]:
    return sa.select(*_COLUMNS).select_from(registrations.outerjoin(task_table, _TASK_OF))


# Built once: a statement made per request costs more to build and key for the cache
# than SQLite takes to run it. Values travel as parameters. Those of a registration's
# write are ``prepared``: on SQLite they go to the driver as compiled once.
_ACTIVE_TWIN = prepared(
    _select().where(
        registrations.c.dedupe_key == sa.bindparam("key"), registrations.c.state == _ACTIVE
    )
)
_TASK_COLUMNS = (task_table.c.state, task_table.c.outcome, task_table.c.snapshot)
# Locked: a registration and the task's end (or its last cancellation) are ordered by
# the task row, so a registration is never left active beside an ended or idle task that
# nobody will emit for or poll (PostgreSQL; SQLite has one writer at a time anyway).
_TASK_STATE = prepared(
    sa.select(*_TASK_COLUMNS)
    .where(
        task_table.c.upstream == sa.bindparam("upstream"),
        task_table.c.task_id == sa.bindparam("task_id"),
    )
    .with_for_update()
)
_NEW_TASK = {  # by "is SQLite": INSERT … ON CONFLICT DO NOTHING in each dialect
    True: prepared(sqlite.insert(task_table).on_conflict_do_nothing()),
    False: postgresql.insert(task_table).on_conflict_do_nothing(),
}
_NEW_TASK_RETURNING = {
    is_sqlite: prepared(insert.returning(*_TASK_COLUMNS)) for is_sqlite, insert in _NEW_TASK.items()
}
# Every column given at each insert: a prepared INSERT names them all.
_NEW_REGISTRATION = prepared(registrations.insert())


def _snapshot(raw: str | None) -> dict[str, Any] | None:
    # Tolerant: a row kept by an older release may hold a byte-order mark or worse.
    return snapshot.load(raw)


def _public(row: Any) -> RegistrationPublic:
    return RegistrationPublic(
        id=row.id,
        task_id=row.task_id,
        upstream=row.upstream,
        callback_url=row.callback_url,
        events=row.events,
        metadata=row.metadata,
        headers=row.headers,
        state=row.state,
        created_at=int(row.created_at),
        task=_snapshot(row.snapshot),
    )


async def create(
    db: Database,
    owner: str,
    body: RegistrationCreate,
    now: float,
    interval: float,
    family: Family = openai_video.FAMILY,
) -> Created:
    """Register a task of the upstream ``body.upstream`` (whose family reads it, and whose
    poll interval it starts at); answers the existing registration when it is the same
    request."""
    key = dedupe_key(owner, body.upstream, body.task_id, body.callback_url)

    async def write(conn: AsyncConnection) -> Created:
        existing = (await conn.execute(_ACTIVE_TWIN, {"key": key})).first()
        if existing is not None:
            return Created(_same_or_conflict(existing, body), False, 0)
        registration_id, emitted, task = await _insert(
            db, conn, owner, key, body, now, interval, family
        )
        await db.notify(conn, "events" if emitted else "tasks")
        if task.state == "ended":  # rare: the insert may have ended it already
            row = (await conn.execute(_select().where(registrations.c.id == registration_id))).one()
            return Created(_public(row), True, emitted)
        public = RegistrationPublic(
            id=registration_id,
            task_id=body.task_id,
            upstream=body.upstream,
            callback_url=body.callback_url,
            events=list(body.events),
            metadata=body.metadata,
            headers=body.headers,
            state="active",
            created_at=int(now),
            task=_snapshot(task.snapshot),
        )
        return Created(public, True, emitted)

    for _ in range(3):
        try:
            return await db.write_grouped(write)  # committed with concurrent ones on SQLite
        except (IntegrityError, Vanished):
            continue  # a concurrent twin won the unique index, or the task row went: again
    raise Conflict("the registration is being created concurrently; retry")


def _same_or_conflict(existing: Any, body: RegistrationCreate) -> RegistrationPublic:
    if set(existing.events) != set(body.events):
        raise Conflict("an active registration for this task and URL has other events", "events")
    if existing.metadata != body.metadata:
        raise Conflict(
            "an active registration for this task and URL has other metadata", "metadata"
        )
    if not headers.same(existing.headers, body.headers):
        raise Conflict("an active registration for this task and URL has other headers", "headers")
    return _public(existing)


async def _insert(
    db: Database,
    conn: AsyncConnection,
    owner: str,
    key: str,
    body: RegistrationCreate,
    now: float,
    interval: float,
    family: Family,
) -> tuple[str, int, Any]:
    """Insert the registration, and its task unless known; answer its id, the events
    queued at once (for a task already ended) and the task's state before. Raises
    Foreign for a keyed caller registering a task another key created here."""
    upstream, task_id = body.upstream, body.task_id
    if owner and await ownership.created_by_another(conn, owner, upstream, task_id):
        raise Foreign("another key created a task with this id")
    fresh = {
        "upstream": upstream,
        "task_id": task_id,
        "state": "watching",
        "created_at": now,
        "watch_started_at": now,
        "next_poll_at": 0.0,  # first polls sort ahead of routine ones
        "interval": interval,
        "errors": 0,
        "empty_completions": 0,
    }
    task = None
    if conn.dialect.insert_returning:  # SQLite 3.35+ and PostgreSQL: one round trip
        insert = _NEW_TASK_RETURNING[db.is_sqlite]
        task = (await conn.execute(insert, fresh)).first()
    else:
        await conn.execute(_NEW_TASK[db.is_sqlite], fresh)
    if task is None:  # the task was known already
        task = (await conn.execute(_TASK_STATE, {"upstream": upstream, "task_id": task_id})).first()
        if task is None:  # retention purged it while we waited for its row
            raise Vanished
    if task.state in ("idle", "given_up"):
        # Nobody was watching it, or we gave it up: watch it afresh.
        await conn.execute(
            task_table.update()
            .where(task_table.c.upstream == upstream, task_table.c.task_id == task_id)
            .values(
                state="watching",
                outcome=None,
                watch_started_at=now,
                next_poll_at=0.0,
                interval=interval,
                not_found_since=None,
                errors=0,
                empty_completions=0,
                ended_at=None,
            )
        )
    registration_id = ids.new_id("reg")
    await conn.execute(
        _NEW_REGISTRATION,
        {
            "id": registration_id,
            "owner": owner,
            "upstream": upstream,
            "task_id": task_id,
            "callback_url": body.callback_url,
            "events": list(body.events),
            "metadata": body.metadata,
            "headers": body.headers,
            "state": "active",
            "dedupe_key": key,
            "created_at": now,
            "updated_at": now,
        },
    )
    # A task a key registers is one of its videos (GET /v1/videos and the routes under it).
    claimed = ownership.claim_values(owner, upstream, task_id, now)
    await ownership.claim_in(conn, db.is_sqlite, claimed)
    emitted = 0
    if task.state == "ended":
        event_type = "video.completed" if task.outcome == "completed" else "video.failed"
        emitted = await outbox.emit_for_registration(
            conn,
            registration_id,
            body.events,
            body.metadata,
            event_type,
            task.snapshot,
            now,
            task_id,
            upstream,
            family,
        )
    return registration_id, emitted, task


async def get(db: Database, owner: str, registration_id: str) -> RegistrationPublic:
    async with db.read() as conn:
        row = (
            await conn.execute(
                _select().where(
                    registrations.c.id == registration_id, registrations.c.owner == owner
                )
            )
        ).first()
    if row is None:
        raise NotFound
    return _public(row)


async def page(
    db: Database,
    owner: str,
    limit: int,
    after: str | None,
    task_id: str | None,
    state: str | None,
    upstream: str | None = None,
) -> tuple[list[RegistrationPublic], bool]:
    """Newest first; ``after`` is the last id of the previous page."""
    query = _select().where(registrations.c.owner == owner)
    if task_id is not None:
        query = query.where(registrations.c.task_id == task_id)
    if upstream is not None:
        query = query.where(registrations.c.upstream == upstream)
    if state is not None:
        query = query.where(registrations.c.state == state)
    if after is not None:
        query = query.where(registrations.c.id < after)
    query = query.order_by(registrations.c.id.desc()).limit(limit + 1)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [_public(row) for row in rows[:limit]], len(rows) > limit


async def cancel(db: Database, owner: str, registration_id: str, now: float) -> RegistrationPublic:
    """Cancel a registration; stop polling its task when nobody else needs it."""

    async def write(conn: AsyncConnection) -> RegistrationPublic:
        row = await _owned(conn, owner, registration_id)
        if row.state in ("delivered", "failed", "ended"):
            raise Conflict(f"the registration is already {row.state}")
        if row.state == "active":
            await _cancel_active(conn, [registration_id], [(row.upstream, row.task_id)], now)
        result = (await conn.execute(_select().where(registrations.c.id == registration_id))).one()
        return _public(result)

    return await db.write_grouped(write)  # committed with concurrent ones on SQLite


async def cancel_task(db: Database, owner: str, upstream: str, task_id: str, now: float) -> int:
    """Cancel every active registration ``owner`` has for the task (it was deleted
    upstream); answers how many were cancelled."""
    async with db.write() as conn:
        ids_ = [
            row.id
            for row in await conn.execute(
                sa.select(registrations.c.id).where(
                    registrations.c.owner == owner,
                    registrations.c.task_id == task_id,
                    registrations.c.upstream == upstream,
                    registrations.c.state == _ACTIVE,
                )
            )
        ]
        if ids_:
            await _cancel_active(conn, ids_, [(upstream, task_id)], now)
    return len(ids_)


async def _cancel_active(
    conn: AsyncConnection,
    registration_ids: Sequence[str],
    task_keys: Sequence[tuple[str, str]],
    now: float,
) -> None:
    """Cancel active registrations: their pending events are dropped, and their tasks
    stop being polled when nobody else needs them."""
    await lock_tasks(conn, task_keys)  # first, as every writer does: no deadlock
    await conn.execute(
        registrations.update()
        .where(registrations.c.id.in_(registration_ids))
        .values(state="cancelled", updated_at=now)
    )
    await conn.execute(
        outbox.events.update()
        .where(
            outbox.events.c.registration_id.in_(registration_ids),
            outbox.events.c.state == "pending",
        )
        .values(state="dropped")
    )
    await _idle_if_unwatched(conn, task_keys, now)


async def lock_tasks(conn: AsyncConnection, task_keys: Sequence[tuple[str, str]]) -> None:
    """Lock task rows, in key order, before reading who watches them: a registration
    made meanwhile then either sees the task's new state or is seen by this transaction."""
    await conn.execute(
        sa.select(task_table.c.task_id)
        .where(by_task(task_table.c.upstream, task_table.c.task_id, sorted(set(task_keys))))
        .order_by(task_table.c.upstream, task_table.c.task_id)
        .with_for_update()
    )


async def _idle_if_unwatched(
    conn: AsyncConnection, task_keys: Sequence[tuple[str, str]], now: float
) -> None:
    still_needed = sa.select(registrations.c.id).where(_TASK_OF, registrations.c.state == _ACTIVE)
    await conn.execute(
        task_table.update()
        .where(
            by_task(task_table.c.upstream, task_table.c.task_id, task_keys),
            task_table.c.state == "watching",
            ~still_needed.exists(),
        )
        .values(state="idle", ended_at=now)  # no longer watched since now
    )


async def _owned(conn: AsyncConnection, owner: str, registration_id: str) -> Any:
    row = (
        await conn.execute(
            sa.select(
                registrations.c.state, registrations.c.upstream, registrations.c.task_id
            ).where(registrations.c.id == registration_id, registrations.c.owner == owner)
        )
    ).first()
    if row is None:
        raise NotFound
    return row


async def redeliver(db: Database, owner: str, registration_id: str, now: float) -> str:
    """Send the terminal event again, same webhook-id; returns the event id."""
    async with db.write() as conn:
        row = await _owned(conn, owner, registration_id)
        if row.state == "cancelled":
            raise Conflict("the registration is cancelled")
        event = (
            await conn.execute(
                sa.select(outbox.events.c.seq, outbox.events.c.id)
                .where(
                    outbox.events.c.registration_id == registration_id,
                    outbox.events.c.type.in_(TERMINAL_EVENTS),
                )
                .order_by(outbox.events.c.seq.desc())
                .limit(1)
            )
        ).first()
        if event is None:
            if row.state == "ended":
                raise Conflict("the task ended with an event this registration did not ask for")
            raise Conflict("the task has not ended yet")
        await conn.execute(
            outbox.events.update()
            .where(outbox.events.c.seq == event.seq)
            .values(state="pending", next_attempt_at=now, lane=outbox.FIRST, first_attempt_at=now)
        )
        await db.notify(conn, "events")
    return str(event.id)


async def deliveries(
    db: Database, owner: str, registration_id: str, limit: int, after: str | None
) -> tuple[list[AttemptPublic], bool]:
    """Attempts, oldest first."""
    async with db.read() as conn:
        await _owned(conn, owner, registration_id)
        query = sa.select(attempts).where(attempts.c.registration_id == registration_id)
        if after is not None:
            query = query.where(attempts.c.id > after)
        rows = (await conn.execute(query.order_by(attempts.c.id).limit(limit + 1))).all()
    items = [
        AttemptPublic(
            id=row.id,
            event_id=row.event_id,
            type=row.type,
            attempt=row.attempt,
            status_code=row.status_code,
            error=row.error,
            duration_ms=row.duration_ms,
            created_at=int(row.created_at),
        )
        for row in rows[:limit]
    ]
    return items, len(rows) > limit


def overdue_tasks(now: float, timeout: float, limit: int) -> sa.Select[Any]:
    """Tasks watched longer than ``timeout``, oldest first; served by ix_tasks_watch_started."""
    return (
        sa.select(task_table.c.upstream, task_table.c.task_id, task_table.c.snapshot)
        .where(
            task_table.c.state == "watching",
            task_table.c.watch_started_at <= now - timeout,
        )
        .order_by(task_table.c.watch_started_at)
        .limit(limit)
    )


async def give_up_overdue(
    db: Database,
    now: float,
    timeout: float,
    families: Mapping[str, Family] | None = None,
    limit: int = 200,
) -> int:
    """Fail tasks of every upstream that have been watched longer than TASK_TIMEOUT,
    oldest first; ``families`` (upstream name -> family) reads their webhooks' result."""
    async with db.write() as conn:
        # Locked, skipping tasks a poller or a registration holds: they are looked at
        # again on the next sweep, and none ends twice.
        overdue = overdue_tasks(now, timeout, limit).with_for_update(skip_locked=True)
        rows = (await conn.execute(overdue)).all()
        if not rows:
            return 0
        keys = [(row.upstream, row.task_id) for row in rows]
        await conn.execute(
            task_table.update()
            .where(by_task(task_table.c.upstream, task_table.c.task_id, keys))
            .values(state="given_up", outcome="failed", ended_at=now, lease_until=None)
        )
        ends = {
            (row.upstream, row.task_id): (
                "video.failed",
                tasks.given_up_data(row.task_id, row.snapshot, "status_proxy_timeout"),
            )
            for row in rows
        }
        for row in rows:
            log.warning(
                "task given up: status_proxy_timeout (not ended within %gs)",
                timeout,
                extra={"task_id": row.task_id, "upstream": row.upstream},
            )
        return await outbox.emit_terminal(conn, ends, now, families or {})
