"""The loop itself, on a small fake pipeline whose jobs are driven by events, not sleeps.

Its outcomes are rows of the real ``settings`` table (key, value) of a real database,
so a write that fails, fails as the database makes it fail."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.config import Settings
from service.db import Database
from service.metrics import Metrics
from service.models import Setting
from service.pipeline import Pipeline
from service.supervisor import Supervisor

rows = Setting.__table__

Outcome = tuple[str, str, Any]  # job id, key, value


@dataclass(eq=False)
class Job:
    """One job and the script it follows: it waits for its gate, then returns or raises."""

    id: str
    value: Any = "done"
    raises: Exception | None = None
    key: str = ""
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.key = self.key or self.id


class Fake(Pipeline[Job, Outcome]):
    """Jobs from a list; outcomes written as rows; the database can be made to go away."""

    name = "fake"

    def __init__(self, db: Database, jobs: list[Job], drain_timeout: float = 30.0) -> None:
        super().__init__(db, Metrics(), idle_wait=30.0, drain_timeout=drain_timeout)
        self.jobs = {job.id: job for job in jobs}
        self.due = list(jobs)
        self.released: list[Job] = []
        self.changed = asyncio.Event()
        self.away = False  # the database is unreachable while set
        self.claim_bug: Exception | None = None
        self.chores: list[Callable[[], Awaitable[None]]] = []
        self.room_for = 4

    def add(self, *jobs: Job) -> None:
        for job in jobs:
            self.jobs[job.id] = job
            self.due.append(job)
        self.kick()

    def room(self) -> int:
        return self.room_for - len(self._inflight)

    async def housekeeping(self, now: float) -> None:
        for number, chore in enumerate(self.chores):
            await self.chore(f"chore_{number}", chore())

    async def claim(self, conn: AsyncConnection, now: float, limit: int) -> list[Job]:
        await conn.execute(sa.select(1))
        if self.claim_bug is not None:
            bug, self.claim_bug = self.claim_bug, None
            raise bug
        taken, self.due = self.due[:limit], self.due[limit:]
        return taken

    async def work(self, job: Job) -> Outcome:
        job.started.set()
        try:
            await job.gate.wait()
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        if job.raises is not None:
            raise job.raises
        return job.id, job.key, job.value

    async def record(self, conn: AsyncConnection, outcomes: list[Outcome], now: float) -> int:
        if self.away:
            raise ConnectionRefusedError("database away")
        for _, key, value in outcomes:
            # Bytes are read as UTF-8, as the poller once read every answer.
            text = value.decode() if isinstance(value, bytes) else value
            await conn.execute(rows.insert().values(key=key, value=text))
        return 0

    async def release(self, conn: AsyncConnection, jobs: list[Job]) -> None:
        self.released += jobs

    def failed(self, job: Job, reason: str) -> Outcome:
        return job.id, f"failed:{job.id}", reason

    def job_of(self, outcome: Outcome) -> Job:
        return self.jobs[outcome[0]]

    def ids(self, job: Job) -> dict[str, str]:
        return {"task_id": job.id}

    def committed(self, queued: int) -> None:
        self.changed.set()


async def stored(db: Database) -> dict[str, str]:
    async with db.read(quick=False) as conn:
        return dict((await conn.execute(sa.select(rows.c.key, rows.c.value))).all())


async def until(fake: Fake, check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Wait, turn by turn of the loop, until ``check`` answers something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            fake.changed.clear()
            if value := await check():
                return value
            await fake.changed.wait()


async def finished(fake: Fake) -> None:
    """Until every job in flight has queued its outcome."""
    if fake._inflight:
        await asyncio.wait(set(fake._inflight))


def errors(fake: Fake, step: str) -> float:
    value = fake.metrics.registry.get_sample_value(
        "status_proxy_worker_errors_total", {"worker": "fake", "step": step}
    )
    return value or 0.0


def scenario(db_url: str, body: Callable[[Database], Awaitable[None]]) -> None:
    async def run() -> None:
        db = Database(Settings(database_url=db_url))
        await db.migrate()
        try:
            await body(db)
        finally:
            await db.dispose()

    asyncio.run(run())


def running(fake: Fake) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(fake.run(stop))


async def stopped(fake: Fake, stop: asyncio.Event, loop: asyncio.Task[None]) -> None:
    stop.set()
    fake.kick()
    await asyncio.wait_for(loop, 15)


def test_stopping_drains_what_finishes_within_the_grace(db_url):
    async def body(db: Database) -> None:
        job = Job("a")
        fake = Fake(db, [job])
        stop, loop = running(fake)
        await job.started.wait()
        stop.set()
        fake.kick()
        job.gate.set()  # it finishes while the loop drains
        await asyncio.wait_for(loop, 15)
        assert await stored(db) == {"a": "done"}
        assert fake.released == [] and not job.cancelled

    scenario(db_url, body)


def test_stopping_cancels_and_releases_what_does_not_finish(db_url):
    async def body(db: Database) -> None:
        slow, quick = Job("slow"), Job("quick")
        fake = Fake(db, [slow, quick], drain_timeout=0.05)
        stop, loop = running(fake)
        await slow.started.wait()
        await quick.started.wait()
        quick.gate.set()
        await until(fake, lambda: stored(db))
        await stopped(fake, stop, loop)
        assert slow.cancelled and fake.released == [slow]
        assert await stored(db) == {"quick": "done"}
        assert fake._inflight == {}  # a restarted loop would have all its room

    scenario(db_url, body)


def test_a_job_that_raises_is_its_outcome_and_logged_once(db_url, caplog):
    async def body(db: Database) -> None:
        bad = Job("bad", raises=RuntimeError("boom\x00 in the signing code\nsecond line"))
        fake = Fake(db, [bad])
        stop, loop = running(fake)
        with caplog.at_level(logging.ERROR, logger="service.pipeline"):
            bad.gate.set()
            written = await until(fake, lambda: stored(db))
        # The type and the first line, made storable (no NUL), as the job's error.
        assert written == {"failed:bad": "RuntimeError: boom? in the signing code"}
        assert errors(fake, "work") == 1
        lines = [r for r in caplog.records if getattr(r, "task_id", None) == "bad"]
        assert len(lines) == 1 and "RuntimeError" in lines[0].getMessage()
        later = Job("later")
        fake.add(later)
        later.gate.set()
        await until(fake, lambda: _has(db, "later"))
        assert not loop.done()
        await stopped(fake, stop, loop)

    scenario(db_url, body)


async def _has(db: Database, key: str) -> bool:
    return key in await stored(db)


def test_one_bad_row_never_sinks_a_batch(db_url):
    async def body(db: Database) -> None:
        async with db.write() as conn:
            await conn.execute(rows.insert().values(key="taken", value="before"))
        jobs = [
            Job("good-1"),
            Job("clash", key="taken"),  # the database refuses it: a duplicate key
            Job("utf16", value='{"status":"completed"}'.encode("utf-16")),  # cannot be read
            Job("good-2"),
        ]
        fake = Fake(db, jobs)
        assert await fake.turn() == 4
        for job in jobs:
            job.gate.set()
        await finished(fake)
        await fake.turn()  # the four outcomes, written together: that fails
        written = await stored(db)
        assert written["good-1"] == written["good-2"] == "done"
        assert written["taken"] == "before"
        assert written["failed:clash"].startswith("outcome could not be recorded: IntegrityError")
        assert written["failed:utf16"].startswith(
            "outcome could not be recorded: UnicodeDecodeError"
        )
        assert errors(fake, "record") == 2 and fake._results == []

    scenario(db_url, body)


def test_an_outcome_that_cannot_be_written_at_all_is_dropped_not_the_loop(db_url, caplog):
    async def body(db: Database) -> None:
        async with db.write() as conn:
            await conn.execute(
                rows.insert(), [{"key": "x", "value": ""}, {"key": "failed:x", "value": ""}]
            )
        doomed, fine = Job("x"), Job("fine")
        fake = Fake(db, [doomed, fine])
        await fake.turn()
        doomed.gate.set()
        fine.gate.set()
        await finished(fake)
        with caplog.at_level(logging.ERROR, logger="service.pipeline"):
            await fake.turn()
        assert (await stored(db))["fine"] == "done"
        assert fake._results == []  # its lease runs out and it is claimed again later
        assert any("not even the error" in r.getMessage() for r in caplog.records)

    scenario(db_url, body)


def test_outcomes_wait_while_the_database_is_away_and_are_written_once(db_url):
    async def body(db: Database) -> None:
        jobs = [Job("a"), Job("b")]
        fake = Fake(db, jobs)
        await fake.turn()
        for job in jobs:
            job.gate.set()
        await finished(fake)
        fake.away = True
        with pytest.raises(ConnectionRefusedError):
            await fake.turn()
        assert len(fake._results) == 2 and errors(fake, "record") == 0
        fake.away = False
        await fake.turn()
        assert await stored(db) == {"a": "done", "b": "done"}

    scenario(db_url, body)


def test_a_housekeeping_step_that_raises_is_counted_and_the_loop_goes_on(db_url):
    async def body(db: Database) -> None:
        calls = {"broken": 0, "away": 0}

        async def broken() -> None:
            calls["broken"] += 1
            raise KeyError("a bug in the sweep")

        async def away_once() -> None:
            calls["away"] += 1
            if calls["away"] == 1:  # the database blinks: waited out by the loop
                raise ConnectionResetError("database away")

        job = Job("a")
        fake = Fake(db, [job])
        fake.chores = [broken, away_once]
        stop, loop = running(fake)
        await job.started.wait()
        job.gate.set()
        await until(fake, lambda: stored(db))
        assert errors(fake, "chore_0") >= 1 and errors(fake, "chore_1") == 0
        assert calls["away"] >= 2 and not loop.done()
        await stopped(fake, stop, loop)

    scenario(db_url, body)


def test_the_loop_survives_all_of_it(db_url):
    async def body(db: Database) -> None:
        async with db.write() as conn:
            await conn.execute(rows.insert().values(key="taken", value="before"))

        async def broken() -> None:
            raise ValueError("housekeeping bug")

        fake = Fake(db, [])
        fake.chores = [broken]
        stop, loop = running(fake)
        for round_ in range(3):
            jobs = [
                Job(f"ok-{round_}"),
                Job(f"raises-{round_}", raises=OSError("not the database")),
                Job(f"clash-{round_}", key="taken"),
                Job(f"bytes-{round_}", value=b"\xff\xfe{\x00}\x00"),
            ]
            fake.add(*jobs)
            for job in jobs:
                await job.started.wait()
                job.gate.set()
            expected = {f"{prefix}-{round_}" for prefix in ("ok", "failed:raises", "failed:clash")}
            expected.add(f"failed:bytes-{round_}")
            await until(fake, lambda e=expected: _has_all(db, e))
        assert not loop.done()
        await stopped(fake, stop, loop)
        assert errors(fake, "work") == 3 and errors(fake, "record") == 6

    scenario(db_url, body)


async def _has_all(db: Database, keys: set[str]) -> bool:
    return keys <= set(await stored(db))


def test_a_bug_in_the_loop_ends_it_and_the_supervisor_restarts_it(db_url):
    async def body(db: Database) -> None:
        fake = Fake(db, [])
        fake.claim_bug = AttributeError("a bug in claim")
        supervisor = Supervisor([fake], fake.metrics, first_wait=0.01)
        supervisor.start()
        job = Job("after")
        fake.add(job)
        await job.started.wait()  # claimed by the restarted loop
        job.gate.set()
        await until(fake, lambda: stored(db))
        restarts = fake.metrics.registry.get_sample_value(
            "status_proxy_worker_restarts_total", {"worker": "fake"}
        )
        assert restarts == 1 and supervisor.problems() == []
        await supervisor.stop()

    scenario(db_url, body)
