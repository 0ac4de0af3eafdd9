"""Bulk recovery: after a receiver's long outage, send the dead terminal events again.

A registration is recovered when it is ``failed`` because its terminal event died
after its last retry, at a time (its ``updated_at``, when it became ``failed``) inside
the window. Its terminal event goes back to the outbox as it was: the same
``webhook-id`` and body, with a fresh retry schedule. The registration stays
``failed`` until the receiver accepts the event, then becomes ``delivered``.

Registrations that failed because the receiver answered ``410 Gone`` are left alone:
the receiver asked for no more, which is not a delivery that died. They can still be
sent again one by one (``POST /v1/registrations/{id}/redeliver``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from service import outbox
from service.db import Database
from service.models import TERMINAL_EVENTS, Attempt, Event, Registration

registrations = Registration.__table__  # type: ignore[attr-defined]
events = Event.__table__  # type: ignore[attr-defined]
attempts = Attempt.__table__  # type: ignore[attr-defined]

BATCH = 500
GONE = 410


def _last_status() -> sa.ScalarSelect[Any]:
    """The status code of the registration's latest attempt (ids sort by time)."""
    return (
        sa.select(attempts.c.status_code)
        .where(attempts.c.registration_id == registrations.c.id)
        .order_by(attempts.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def recoverable(owner: str, since: float, until: float, limit: int) -> sa.Select[Any]:
    """The owner's failed registrations that died within [since, until] with a dead
    terminal event to send again; served by ix_registrations_updated."""
    dead_terminal = (
        sa.select(events.c.seq)
        .where(
            events.c.registration_id == registrations.c.id,
            events.c.type.in_(TERMINAL_EVENTS),
            events.c.state == "dead",
        )
        .exists()
    )
    last = _last_status()
    return (
        sa.select(registrations.c.id)
        .where(
            registrations.c.state == "failed",
            registrations.c.updated_at >= since,
            registrations.c.updated_at <= until,
            registrations.c.owner == owner,
            dead_terminal,
            sa.or_(last.is_(None), last != GONE),
        )
        .order_by(registrations.c.updated_at)
        .limit(limit)
    )


async def recover(db: Database, owner: str, since: float, until: float, now: float) -> int:
    """Queue the dead terminal events of the owner's registrations that died in
    [since, until] (unix seconds) again; returns how many registrations were recovered.
    Works in batches, each its own short transaction."""
    total = 0
    while True:
        async with db.write() as conn:
            found = [row[0] for row in await conn.execute(recoverable(owner, since, until, BATCH))]
            if found:
                await conn.execute(_requeue(found, now))
                await db.notify(conn, "events")
        total += len(found)
        if len(found) < BATCH:
            return total
        await asyncio.sleep(0)  # SQLite writes run on the event loop: let requests through


def _requeue(registration_ids: list[str], now: float) -> sa.Update:
    """Back to the outbox as a first attempt, with the whole retry schedule ahead: the
    attempt count starts again, so the attempt log numbers this round from 1."""
    statement: sa.Update = (
        events.update()
        .where(
            events.c.registration_id.in_(registration_ids),
            events.c.type.in_(TERMINAL_EVENTS),
            events.c.state == "dead",
        )
        # The retry window starts afresh too: an event recovered while its receiver's
        # circuit is still open waits for the probe instead of dying at once.
        .values(
            state="pending",
            attempts=0,
            lane=outbox.FIRST,
            next_attempt_at=now,
            lease_until=None,
            first_attempt_at=now,
        )
    )
    return statement
