"""Circuit breakers per receiver origin (scheme, host, port), kept in the database so
that every worker of every replica sees the same state.

After ``THRESHOLD`` consecutive failed attempts an origin's circuit opens: its events
wait, and after a cool-down one probe goes (the cool-down doubles after each failed
probe, up to a maximum); the first success closes it. Only origins with a current
streak of failures have a row: a success deletes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from service import operator_events
from service.config import Settings
from service.db import prepared
from service.models import Circuit

log = logging.getLogger(__name__)
circuits = Circuit.__table__  # type: ignore[attr-defined]

THRESHOLD = 5
STREAK_KEPT = 86400.0  # a closed circuit's failures older than this are forgotten


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Open:
    """An open circuit, as a claim sees it."""

    origin: str
    probe_at: float
    probe_until: float | None

    def probe_due(self, now: float) -> bool:
        return self.probe_at <= now and (self.probe_until is None or self.probe_until < now)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished attempt, as the breaker counts it."""

    origin: str
    ok: bool  # the receiver answered (2xx, or 410: it is up and said "stop")
    probe: bool


# Every delivery turn runs these two: built once, their values bound at execution.
_OPEN_AMONG = prepared(
    sa.select(circuits.c.origin, circuits.c.probe_at, circuits.c.probe_until).where(
        circuits.c.origin.in_(sa.bindparam("b_origins", expanding=True)),
        circuits.c.state == State.OPEN,
    )
)
_CLOSE = prepared(
    circuits.delete()
    .where(circuits.c.origin == sa.bindparam("b_origin"))
    .returning(circuits.c.state, circuits.c.opened_at)
)


async def open_among(conn: AsyncConnection, origins: Sequence[str]) -> dict[str, Open]:
    """The open circuits of these origins."""
    if not origins:
        return {}
    rows = await conn.execute(_OPEN_AMONG, {"b_origins": sorted(set(origins))})
    return {row.origin: Open(row.origin, row.probe_at, row.probe_until) for row in rows}


async def take_probe(conn: AsyncConnection, origin_: str, now: float, lease: float) -> bool:
    """Lease the one probe of an open circuit; atomic, so one worker of all gets it."""
    result = await conn.execute(
        circuits.update()
        .where(
            circuits.c.origin == origin_,
            circuits.c.state == State.OPEN,
            circuits.c.probe_at <= now,
            sa.or_(circuits.c.probe_until.is_(None), circuits.c.probe_until < now),
        )
        .values(probe_until=now + lease, updated_at=now)
    )
    return bool(result.rowcount)


async def count(
    conn: AsyncConnection, outcomes: Sequence[Outcome], now: float, cooldown: float, most: float
) -> tuple[list[str], list[tuple[str, float]]]:
    """Count finished attempts, in order; answers the origins opened by them, and those
    closed with the time each had opened at."""
    opened: list[str] = []
    closed: list[tuple[str, float]] = []
    for name, streak in _streaks(outcomes).items():
        ok, failures, probe_failed = streak
        if ok and (opened_at := await _close(conn, name)) is not None:
            closed.append((name, opened_at))
        if failures:
            await _add_failures(conn, name, failures, now)
            if await _open(conn, name, now, cooldown):
                opened.append(name)
            elif probe_failed:
                await _back_off(conn, name, now, most)
    return opened, closed


def _streaks(outcomes: Sequence[Outcome]) -> dict[str, tuple[bool, int, bool]]:
    """Per origin: whether any attempt succeeded, the failures after the last success,
    and whether the probe was among them."""
    streaks: dict[str, tuple[bool, int, bool]] = {}
    for outcome in outcomes:
        ok, failures, probe_failed = streaks.get(outcome.origin, (False, 0, False))
        if outcome.ok:
            streaks[outcome.origin] = (True, 0, False)
        else:
            streaks[outcome.origin] = (ok, failures + 1, probe_failed or outcome.probe)
    return streaks


async def _close(conn: AsyncConnection, name: str) -> float | None:
    """Forget the origin's failures; when that closed an open circuit, the time it opened."""
    rows = (await conn.execute(_CLOSE, {"b_origin": name})).all()
    return next((float(row.opened_at) for row in rows if row.state == State.OPEN), None)


async def _add_failures(conn: AsyncConnection, name: str, failures: int, now: float) -> None:
    values = {"origin": name, "state": State.CLOSED, "failures": failures, "updated_at": now}
    insert: Any = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(circuits)
    await conn.execute(
        insert.values(values).on_conflict_do_update(
            index_elements=[circuits.c.origin],
            set_={"failures": circuits.c.failures + failures, "updated_at": now},
        )
    )


async def _open(conn: AsyncConnection, name: str, now: float, cooldown: float) -> bool:
    result = await conn.execute(
        circuits.update()
        .where(
            circuits.c.origin == name,
            circuits.c.state == State.CLOSED,
            circuits.c.failures >= THRESHOLD,
        )
        .values(
            state=State.OPEN,
            opened_at=now,
            cooldown=cooldown,
            probe_at=now + cooldown,
            probe_until=None,
            updated_at=now,
        )
    )
    return bool(result.rowcount)


async def _back_off(conn: AsyncConnection, name: str, now: float, most: float) -> None:
    """A failed probe: the next waits twice as long, up to ``most``."""
    doubled = sa.case((circuits.c.cooldown * 2 > most, most), else_=circuits.c.cooldown * 2)
    await conn.execute(
        circuits.update()
        .where(circuits.c.origin == name, circuits.c.state == State.OPEN)
        .values(cooldown=doubled, probe_at=now + doubled, probe_until=None, updated_at=now)
    )


async def summary(conn: AsyncConnection) -> tuple[int, float | None]:
    """How many circuits are open, and since when the oldest has been."""
    opened, oldest = (
        await conn.execute(
            sa.select(sa.func.count(), sa.func.min(circuits.c.opened_at)).where(
                circuits.c.state == State.OPEN
            )
        )
    ).one()
    return int(opened), oldest


async def opened(conn: AsyncConnection) -> list[tuple[str, float, float]]:
    """Open circuits as (origin, opened at, next probe at), longest open first."""
    rows = await conn.execute(
        sa.select(circuits.c.origin, circuits.c.opened_at, circuits.c.probe_at)
        .where(circuits.c.state == State.OPEN)
        .order_by(circuits.c.opened_at)
    )
    return [(row.origin, row.opened_at, row.probe_at) for row in rows]


def forget_idle(cutoff: float) -> sa.Delete:
    """Closed circuits whose last failure is older than ``cutoff``: a streak that old
    is no streak; their origin starts afresh."""
    statement: sa.Delete = circuits.delete().where(
        circuits.c.state == State.CLOSED, circuits.c.updated_at < cutoff
    )
    return statement


async def opened_now(conn: AsyncConnection, settings: Settings, origin_: str, now: float) -> None:
    """A circuit opened, inside the transaction that opened it: logged, and told to the
    operator (``origin.circuit_opened``)."""
    log.warning("circuit opened for %s after %d failed attempts", origin_, THRESHOLD)
    retry_at = now + settings.circuit_cooldown
    await operator_events.circuit_opened(conn, settings, origin_, now, THRESHOLD, retry_at)


async def closed_now(
    conn: AsyncConnection, settings: Settings, origin_: str, now: float, opened_at: float
) -> None:
    """A circuit closed, inside the transaction that closed it: logged, and told to the
    operator (``origin.circuit_closed``)."""
    log.info("circuit closed for %s: a delivery was accepted", origin_)
    await operator_events.circuit_closed(conn, settings, origin_, now, opened_at)
