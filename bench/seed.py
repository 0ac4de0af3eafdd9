"""Fill a fresh database with work for a benchmark, through the service's own schema."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from service import ids, outbox, ownership
from service.config import Settings
from service.db import Database
from service.models import Registration, Task, compact_json
from service.registrations import dedupe_key

tasks = Task.__table__  # type: ignore[attr-defined]
registrations = Registration.__table__  # type: ignore[attr-defined]
BATCH = 5000
FAR = 4e9  # seconds since the epoch: a due time no poller reaches before it is set
SNAPSHOT = {"id": "video_bench", "object": "video", "status": "in_progress", "progress": 42}


def sample_body() -> str:
    """A webhook body of the size status-proxy sends."""
    data = compact_json({**SNAPSHOT, "status": "completed", "video_url": "https://cdn.example/v"})
    return outbox.body(
        "evt_bench", "video.completed", time.time(), "reg_bench", {}, data, SNAPSHOT["id"]
    )


def _task(task_id: str, now: float, **values: Any) -> dict[str, Any]:
    row = {
        "upstream": "default", "task_id": task_id, "state": "watching", "created_at": now,
        "watch_started_at": now,
        "next_poll_at": 0.0, "interval": 5.0, "errors": 0, "empty_completions": 0,
    }  # fmt: skip
    row.update(values)
    return row


def _registration(task_id: str, callback: str, now: float, **values: Any) -> dict[str, Any]:
    row = {
        "id": ids.new_id("reg"), "owner": "", "upstream": "default", "task_id": task_id,
        "callback_url": callback,
        "events": ["video.completed", "video.failed"], "metadata": {}, "state": "active",
        "dedupe_key": dedupe_key("", "default", task_id, callback),
        "created_at": now, "updated_at": now,
    }  # fmt: skip
    row.update(values)
    return row


async def _fill(database_url: str, tables: Iterable[tuple[Any, list[dict[str, Any]]]]) -> None:
    db = Database(Settings(database_url=database_url))
    try:
        await db.migrate()
        for table, rows in tables:
            for start in range(0, len(rows), BATCH):
                async with db.write() as conn:
                    await conn.execute(table.insert(), rows[start : start + BATCH])
    finally:
        await db.dispose()


async def cached_snapshot(database_url: str, task_id: str, owner: str) -> None:
    """One tracked task with a stored snapshot, as GET /v1/videos serves it to ``owner``
    (the hex digest of the client key that registered it)."""
    now = time.time()
    snapshot = json.dumps({**SNAPSHOT, "id": task_id})
    row = _task(task_id, now, snapshot=snapshot, snapshot_at=now, next_poll_at=now + 10**9)
    owned = ownership.claim_values(owner, "default", task_id, now)
    await _fill(database_url, [(tasks, [row]), (ownership.owned, [owned])])


async def watching(database_url: str, count: int, callback: str) -> None:
    """``count`` tasks due for a poll, each with one registration."""
    now = time.time()
    names = [f"video_watch_{n}" for n in range(count)]
    await _fill(
        database_url,
        [
            (tasks, [_task(name, now) for name in names]),
            (registrations, [_registration(name, callback, now) for name in names]),
        ],
    )


async def ending(
    database_url: str, count: int, callback: str, start: float, spread: float
) -> dict[str, float]:
    """``count`` watched tasks that the bench upstream ends at known times after
    ``start``; returns each task's end time."""
    now = time.time()
    ends = {f"video_end_{int((start + spread * n / count) * 1000)}_{n}": 0.0 for n in range(count)}
    for name in ends:
        ends[name] = int(name.split("_")[2]) / 1000
    await _fill(
        database_url,
        [
            (tasks, [_task(name, now) for name in ends]),
            (registrations, [_registration(name, callback, now) for name in ends]),
        ],
    )
    return ends


async def pending_webhooks(database_url: str, count: int, callback: str) -> None:
    """``count`` ended tasks, each with a registration whose terminal event waits."""
    now = time.time()
    data = compact_json({**SNAPSHOT, "status": "completed", "video_url": "https://cdn.example/v"})
    names = [f"video_done_{n}" for n in range(count)]
    regs = [_registration(name, callback, now) for name in names]
    events = []
    for reg in regs:
        event_id = ids.new_id("evt")
        events.append({
            "id": event_id, "registration_id": reg["id"], "type": "video.completed",
            "body": outbox.body(
                event_id, "video.completed", now, reg["id"], {}, data, reg["task_id"]
            ),
            "state": "pending", "attempts": 0, "lane": outbox.FIRST, "next_attempt_at": now,
            "lease_until": None, "created_at": now,
        })  # fmt: skip
    done = [_task(name, now, state="ended", outcome="completed", ended_at=now) for name in names]
    await _fill(database_url, [(tasks, done), (registrations, regs), (outbox.events, events)])


async def rotation(database_url: str, count: int, callback: str, rate: float) -> None:
    """``count`` watched tasks already polled once, coming due one after another at
    ``rate`` a second (task ``video_due_{n}`` at ``n / rate`` after a start that
    ``due_from`` sets): the steady state of a fair rotation at that rate limit. Written
    with SQLite's own executemany, which fills a million rows in seconds."""
    db = Database(Settings(database_url=database_url))
    try:
        await db.migrate()
    finally:
        await db.dispose()
    now = time.time()
    path = database_url.removeprefix("sqlite:///")
    rows = (
        _task(f"video_due_{n}", now, next_poll_at=FAR + n / rate, polled_at=now, interval=30.0)
        for n in range(count)
    )
    regs = (_registration(f"video_due_{n}", callback, now) for n in range(count))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        _insert_many(conn, "tasks", rows)
        _insert_many(conn, "registrations", regs)


def due_from(database_url: str, start: float, rate: float) -> None:
    """Start the rotation of ``rotation``: task ``n`` comes due at ``start + n / rate``."""
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE tasks SET next_poll_at = next_poll_at - ? + ?", (FAR, start))


def _insert_many(conn: sqlite3.Connection, table: str, rows: Iterable[dict[str, Any]]) -> None:
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return
    names = list(first)
    sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"

    def values(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            json.dumps(row[name]) if isinstance(row[name], list | dict) else row[name]
            for name in names
        )

    conn.executemany(sql, [values(first)])
    conn.executemany(sql, (values(row) for row in iterator))
