"""Retention: what ended long enough ago is deleted in small batches, so the database
stays bounded under steady load. Active work and anything still pending is never touched."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from service import circuits, idempotency, operator_events, ownership
from service.db import Database, by_task
from service.models import Attempt, Event, Registration, Task

registrations = Registration.__table__  # type: ignore[attr-defined]
events = Event.__table__  # type: ignore[attr-defined]
attempts = Attempt.__table__  # type: ignore[attr-defined]
tasks = Task.__table__  # type: ignore[attr-defined]

FINAL = ("delivered", "failed", "ended", "cancelled")
UNWATCHED = ("ended", "given_up", "idle")
BATCH = 500


async def purge_batch(db: Database, now: float, retention: float) -> int:
    """Delete one batch of expired registrations (with their events and attempts) and of
    snapshots no registration refers to; returns how many rows went."""
    cutoff = now - retention
    waiting = (
        sa.select(events.c.seq)
        .where(events.c.registration_id == registrations.c.id, events.c.state == "pending")
        .exists()
    )
    referred = sa.select(registrations.c.id).where(
        registrations.c.task_id == tasks.c.task_id, registrations.c.upstream == tasks.c.upstream
    )
    async with db.write() as conn:
        expired = await _first_column(
            conn,
            sa.select(registrations.c.id).where(
                registrations.c.state.in_(FINAL), registrations.c.updated_at < cutoff, ~waiting
            ),
        )
        if expired:
            await conn.execute(attempts.delete().where(attempts.c.registration_id.in_(expired)))
            await conn.execute(events.delete().where(events.c.registration_id.in_(expired)))
            await conn.execute(registrations.delete().where(registrations.c.id.in_(expired)))
        unneeded = [
            (row.upstream, row.task_id)
            for row in await conn.execute(
                sa.select(tasks.c.upstream, tasks.c.task_id)
                .where(tasks.c.state.in_(UNWATCHED), tasks.c.ended_at < cutoff, ~referred.exists())
                .limit(BATCH)
                # A task being registered right now holds its row: it stays.
                .with_for_update(skip_locked=True)
            )
        ]
        if unneeded:
            await conn.execute(
                tasks.delete().where(by_task(tasks.c.upstream, tasks.c.task_id, unneeded))
            )
        forgotten = await _purge_owned(conn, cutoff)
    return len(expired) + len(unneeded) + forgotten


async def _purge_owned(conn: Any, cutoff: float) -> int:
    """Videos a key has not touched within the retention, and no longer registers, leave
    its list (the upstream's links and files are long gone by then)."""
    owned = ownership.owned
    registered = sa.select(registrations.c.id).where(
        registrations.c.owner == owned.c.owner,
        registrations.c.task_id == owned.c.task_id,
        registrations.c.upstream == owned.c.upstream,
    )
    stale = (
        sa.select(owned.c.owner, owned.c.upstream, owned.c.task_id)
        .where(owned.c.updated_at < cutoff, ~registered.exists())
        .limit(BATCH)
    )
    keys = [tuple(row) for row in await conn.execute(stale)]
    if keys:
        key = sa.tuple_(owned.c.owner, owned.c.upstream, owned.c.task_id)
        await conn.execute(owned.delete().where(key.in_(keys)))
    return len(keys)


async def _first_column(conn: Any, query: sa.Select[Any]) -> list[Any]:
    return [row[0] for row in await conn.execute(query.limit(BATCH))]


async def purge(db: Database, now: float, retention: float, most: int = 20) -> int:
    """Up to ``most`` batches, each its own short transaction; and expired idempotency
    keys (kept 24 hours whatever the retention) and stale failure streaks of origins."""
    removed = await idempotency.purge(db, now)
    async with db.write() as conn:
        purged = await conn.execute(operator_events.purge_statement(now - retention))
        removed += purged.rowcount or 0
        await conn.execute(circuits.forget_idle(now - circuits.STREAK_KEPT))
    for _ in range(most):
        count = await purge_batch(db, now, retention)
        removed += count
        if count < BATCH:
            break
        await asyncio.sleep(0)  # SQLite writes run on the event loop: let requests through
    return removed
