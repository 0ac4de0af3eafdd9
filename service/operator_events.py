"""Operator events: status-proxy's own signed events for its operator, sent durably.

Written in the transaction of the change they report (a delivery dying, a circuit
opening or closing, the upstream refusing or accepting the key), kept in their own
outbox table, and sent by a small worker to ``STATUS_PROXY_OPERATOR_WEBHOOK_URL`` on the
delivery retry schedule, so they survive restarts like webhooks. They are signed with
``STATUS_PROXY_WEBHOOK_SECRET`` and carry no client key, secret or custom header; the
operator URL is the operator's own setting, so the callback address guard does not
apply to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import callbacks, ids, outbox
from service.config import Settings
from service.models import TERMINAL_EVENTS, OperatorEvent, compact_json

table = OperatorEvent.__table__  # type: ignore[attr-defined]


class Kind(StrEnum):
    """The operator event types of the contract."""

    DELIVERY_FAILED = "delivery.failed"
    CIRCUIT_OPENED = "origin.circuit_opened"
    CIRCUIT_CLOSED = "origin.circuit_closed"
    KEY_REFUSED = "upstream.key_refused"
    KEY_ACCEPTED = "upstream.key_accepted"


class State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


def enabled(settings: Settings) -> bool:
    return settings.operator_webhook_url is not None


def deliveries_failed(results: list[outbox.Result]) -> list[tuple[Kind, dict[str, Any]]]:
    """``delivery.failed`` for each registration these attempts failed: a terminal event
    dead after its last retry (or its retry window), or any event answered 410."""
    found = []
    for r in results:
        dead = r.event.type in TERMINAL_EVENTS and not r.accepted and r.next_attempt_at is None
        if r.gone or dead:
            data = {
                "registration_id": r.event.registration_id,
                "task_id": r.event.task_id,
                "upstream": r.event.upstream,
                "event_id": r.event.id,
                "event_type": r.event.type,
                "reason": "gone" if r.gone else "retries_exhausted",
                "attempts": r.event.attempts + 1,
                "status_code": r.status_code,
                "error": r.error,
                # Not the whole URL: its path or query may carry the receiver's token.
                "callback_origin": callbacks.origin(r.event.callback_url),
            }
            found.append((Kind.DELIVERY_FAILED, data))
    return found


def body(event_id: str, kind: str, created: float, data: dict[str, Any]) -> str:
    """The Standard Webhooks body ``{"id","type","timestamp","data"}``."""
    stamp = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return compact_json({"id": event_id, "type": kind, "timestamp": stamp, "data": data})


async def emit(
    conn: AsyncConnection,
    settings: Settings,
    items: Iterable[tuple[Kind, dict[str, Any]]],
    now: float,
) -> int:
    """Queue events of (type, data) in the caller's transaction; nothing without an
    operator URL. Returns how many were queued."""
    if not enabled(settings):
        return 0
    rows = []
    for kind, data in items:
        event_id = ids.new_id("evt")
        rows.append(
            {
                "id": event_id,
                "type": str(kind),
                "body": body(event_id, kind, now, data),
                "state": State.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "lease_until": None,
                "created_at": now,
            }
        )
    if rows:
        await conn.execute(table.insert(), rows)
    return len(rows)


async def circuit_opened(
    conn: AsyncConnection,
    settings: Settings,
    origin_: str,
    now: float,
    failures: int,
    retry_at: float,
) -> int:
    """``origin.circuit_opened``: ``origin_`` (scheme://host:port) failed ``failures`` times
    in a row; its events wait, and a probe goes at ``retry_at`` (unix seconds)."""
    data = {"origin": origin_, "failures": failures, "retry_at": int(retry_at)}
    return await emit(conn, settings, [(Kind.CIRCUIT_OPENED, data)], now)


async def circuit_closed(
    conn: AsyncConnection, settings: Settings, origin_: str, now: float, opened_at: float
) -> int:
    """``origin.circuit_closed``: a probe to ``origin_`` succeeded; it was open since
    ``opened_at`` (unix seconds)."""
    data = {"origin": origin_, "opened_at": int(opened_at)}
    return await emit(conn, settings, [(Kind.CIRCUIT_CLOSED, data)], now)


@dataclass(slots=True)
class Leased:
    """An operator event leased for one attempt."""

    seq: int
    id: str
    type: str
    body: str
    attempts: int
    lease_until: float


@dataclass(slots=True)
class Outcome:
    """What one attempt at an operator event came to."""

    event: Leased
    accepted: bool
    next_attempt_at: float | None  # None: delivered or dead


def due(now: float, limit: int) -> sa.Select[tuple[int]]:
    """Pending events whose time has come, oldest first; served by ix_operator_events_due."""
    return (
        sa.select(table.c.seq)
        .where(
            table.c.state == State.PENDING,
            table.c.next_attempt_at <= now,
            sa.or_(table.c.lease_until.is_(None), table.c.lease_until < now),
        )
        .order_by(table.c.next_attempt_at)
        .limit(limit)
    )


async def lease(conn: AsyncConnection, now: float, limit: int, seconds: float) -> list[Leased]:
    """Lease up to ``limit`` due events for ``seconds``."""
    lease_until = now + seconds
    rows = await conn.execute(
        table.update()
        .where(table.c.seq.in_(due(now, limit).with_for_update(skip_locked=True).scalar_subquery()))
        .values(lease_until=lease_until)
        .returning(table.c.seq, table.c.id, table.c.type, table.c.body, table.c.attempts)
    )
    return [Leased(r.seq, r.id, r.type, r.body, r.attempts, lease_until) for r in rows.all()]


async def write_outcomes(conn: AsyncConnection, outcomes: list[Outcome], now: float) -> None:
    """Record attempts; only the holder of an event's lease may write it."""
    await conn.execute(
        table.update()
        .where(table.c.seq == sa.bindparam("b_seq"), table.c.lease_until == sa.bindparam("b_lease"))
        .values(
            state=sa.bindparam("b_state"),
            attempts=sa.bindparam("b_attempts"),
            next_attempt_at=sa.bindparam("b_next"),
            lease_until=None,
        ),
        [
            {
                "b_seq": o.event.seq,
                "b_lease": o.event.lease_until,
                "b_state": _state(o),
                "b_attempts": o.event.attempts + 1,
                "b_next": o.next_attempt_at if o.next_attempt_at is not None else now,
            }
            for o in outcomes
        ],
    )


def _state(outcome: Outcome) -> State:
    if outcome.accepted:
        return State.DELIVERED
    return State.PENDING if outcome.next_attempt_at is not None else State.DEAD


async def release(conn: AsyncConnection, leased: list[Leased]) -> None:
    if leased:
        await conn.execute(
            table.update()
            .where(table.c.seq.in_([event.seq for event in leased]))
            .values(lease_until=None)
        )


def purge_statement(cutoff: float) -> sa.Delete:
    """Delivered and dead operator events older than ``cutoff``."""
    statement: sa.Delete = table.delete().where(
        table.c.state.in_([State.DELIVERED, State.DEAD]), table.c.next_attempt_at < cutoff
    )
    return statement
