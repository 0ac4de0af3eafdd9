"""The loop the poller and the deliverer share.

Each turn is one write transaction: it records the outcomes of the jobs that finished
and leases as much new work as there is room for. Jobs run concurrently and wake the
loop as they finish, so under load every transaction carries many rows (the batching
that keeps SQLite fast) and freed room is refilled without waiting for a timer.

The loop's contract is enforced here, not left to subclasses: a job that raises is
that job's outcome (an error, retried on the job's own schedule); a batch that cannot
be written is written one outcome at a time, and the one that still fails is recorded
as its job's error; a housekeeping step that raises is logged and counted. Only the
database being away stops a turn, and that is waited out.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import logs, supervisor
from service.db import UNAVAILABLE, Database, is_away
from service.metrics import Metrics

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")

REASON_LIMIT = 200  # characters of an exception kept in an attempt's or a poll's error


def describe(exc: BaseException, hidden: Sequence[str] = ()) -> str:
    """``Type: first line of the message``, at most 200 characters, with ``hidden``
    values (keys, secrets) masked. A database error's statement and parameters are
    left out: they can carry bodies and metadata."""
    cause: BaseException = exc
    if isinstance(exc, sa.exc.StatementError) and isinstance(exc.orig, BaseException):
        cause = exc.orig
    lines = str(cause).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    for value in hidden:
        if value:
            text = text.replace(value, "[hidden]")
    # Clean text whatever the message held (NUL, lone surrogates), so that it can be stored.
    return "".join(char if char.isprintable() else "?" for char in text[:REASON_LIMIT])


def _traceback(exc: BaseException, hidden: Sequence[str] = ()) -> BaseException | None:
    """The exception to log with its traceback: a bug deserves one. Not a database
    error (its text repeats the statement), nor one whose text holds a hidden value."""
    if isinstance(exc, sa.exc.StatementError):
        return None
    text = "".join(traceback.format_exception(exc))
    return None if any(value and value in text for value in hidden) else exc


class Pipeline(ABC, Generic[Job, Outcome]):
    """Claim, run and record jobs; subclasses say how."""

    name: str

    def __init__(
        self, db: Database, metrics: Metrics, idle_wait: float, drain_timeout: float
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.idle_wait = idle_wait
        self.drain_timeout = drain_timeout
        self.outage = supervisor.Outage(self.name)
        self._kick = asyncio.Event()
        self._results: list[Outcome] = []
        self._inflight: dict[asyncio.Task[None], Job] = {}

    def kick(self) -> None:
        """Look for work now (it arrived, a job finished, or we stop)."""
        self._kick.set()

    @abstractmethod
    def room(self) -> int:
        """How many jobs may start now."""

    @abstractmethod
    async def claim(self, conn: AsyncConnection, now: float, limit: int) -> list[Job]:
        """Lease up to ``limit`` due jobs."""

    @abstractmethod
    async def work(self, job: Job) -> Outcome:
        """Run one job. Whatever it raises becomes ``failed(job, reason)``."""

    @abstractmethod
    async def record(self, conn: AsyncConnection, outcomes: list[Outcome], now: float) -> int:
        """Write finished jobs' outcomes, only for jobs whose lease we still hold;
        returns how much follow-up work they queued."""

    @abstractmethod
    async def release(self, conn: AsyncConnection, jobs: list[Job]) -> None:
        """Give back the leases of jobs that will not finish (we are stopping)."""

    @abstractmethod
    def failed(self, job: Job, reason: str) -> Outcome:
        """The outcome of a job that came to nothing (it raised, or its outcome could
        not be written): an error carrying ``reason``, retried on the job's schedule."""

    @abstractmethod
    def job_of(self, outcome: Outcome) -> Job:
        """The job an outcome belongs to."""

    @abstractmethod
    def ids(self, job: Job) -> dict[str, str]:
        """The ids that mark a job's log lines (``task_id``, ``registration_id``, …)."""

    def hidden(self) -> list[str]:
        """Values that never reach a log line or a stored error (keys, secrets)."""
        return []

    async def housekeeping(self, now: float) -> None:
        """Periodic work of the subclass, before each turn; each step runs in ``chore``."""

    def started(self, job: Job, now: float) -> None:
        """A claimed job is about to run."""

    def committed(self, queued: int) -> None:
        """A turn's transaction has committed, with ``queued`` follow-up work in it."""

    def wait_hint(self) -> float:
        """How long to sleep when nothing is due."""
        return self.idle_wait

    async def run(self, stop: asyncio.Event) -> None:
        """Turn until ``stop``; then drain. Raises only for a bug in the loop itself."""
        try:
            while not stop.is_set():
                try:
                    started = await self.turn()
                except UNAVAILABLE as exc:
                    await supervisor.pause(stop, self.outage.failed(exc))
                    continue
                self.outage.recovered()
                if started and self.room() > 0:
                    continue  # more may be due
                await supervisor.nap(self._kick, self.wait_hint())
        finally:
            await self._drain()

    async def chore(self, step: str, work: Awaitable[object]) -> None:
        """Run one housekeeping step. Its failure is logged and counted and the loop
        goes on; only the database being away is left to the loop to wait out."""
        try:
            await work
        except Exception as exc:
            if is_away(exc):
                raise
            self.metrics.worker_errors.labels(self.name, step).inc()
            log.error(
                "%s: %s failed (%s); trying again at its next turn",
                self.name, step, describe(exc, self.hidden()),
                exc_info=_traceback(exc, self.hidden()),
            )  # fmt: skip

    async def turn(self, claiming: bool = True) -> int:
        """One transaction: record what finished, claim what fits. Returns jobs started."""
        now = time.time()
        room = 0
        if claiming:
            await self.housekeeping(now)
            room = self.room()
        # Outcomes stay queued until written: a database blip delays them, never loses them.
        batch, self._results = self._results, []
        if not batch and room <= 0:
            return 0
        claimed: list[Job] = []
        queued = 0
        recording = bool(batch)
        try:
            async with self.db.write() as conn:
                if batch:
                    queued = await self.record(conn, batch, now)
                recording = False
                if room > 0:
                    claimed = await self.claim(conn, now, room)
        except Exception as exc:
            if not recording or is_away(exc):
                self._results[:0] = batch
                raise
            # One bad row must not sink the others: write them one at a time, and
            # claim again at the next turn.
            log.warning(
                "%s: writing %d outcomes together failed (%s); writing them one by one",
                self.name, len(batch), describe(exc, self.hidden()),
            )  # fmt: skip
            queued = await self._record_each(batch, now)
            self._kick.set()
        self.committed(queued)
        for job in claimed:
            self.started(job, now)
            task = asyncio.create_task(self._run_job(job))
            self._inflight[task] = job
            task.add_done_callback(self._forget)
        return len(claimed)

    async def _record_each(self, batch: list[Outcome], now: float) -> int:
        """Each outcome in its own transaction; what is not written when the database
        goes away stays queued."""
        queued = 0
        for index, outcome in enumerate(batch):
            try:
                queued += await self._record_one(outcome, now)
            except BaseException:
                self._results[:0] = batch[index:]
                raise
        return queued

    async def _record_one(self, outcome: Outcome, now: float) -> int:
        try:
            async with self.db.write() as conn:
                return await self.record(conn, [outcome], now)
        except Exception as exc:
            if is_away(exc):
                raise
            job = self.job_of(outcome)
            reason = f"outcome could not be recorded: {describe(exc, self.hidden())}"
            self._note_failure(job, "record", exc, reason)
            failure = self.failed(job, reason)
        try:
            async with self.db.write() as conn:
                return await self.record(conn, [failure], now)
        except Exception as exc:
            if is_away(exc):
                raise
            # Nothing about this job can be written: its lease runs out and it is
            # taken up again then, on another turn.
            log.error(
                "%s: not even the error could be recorded (%s); the job is retried "
                "once its lease runs out", self.name, describe(exc, self.hidden()),
                exc_info=_traceback(exc, self.hidden()), extra=self.ids(job),
            )  # fmt: skip
            return 0

    def _note_failure(self, job: Job, step: str, exc: BaseException, reason: str) -> None:
        self.metrics.worker_errors.labels(self.name, step).inc()
        log.error(
            "%s: %s; recorded as the job's error",
            self.name, reason, exc_info=_traceback(exc, self.hidden()), extra=self.ids(job),
        )  # fmt: skip

    def _forget(self, task: asyncio.Task[None]) -> None:
        job = self._inflight.pop(task, None)
        if task.cancelled():
            return
        if task.exception() is not None and job is not None:  # only a bug in failed() itself
            log.error(
                "%s: a job ended without an outcome; retried once its lease runs out",
                self.name, exc_info=task.exception(), extra=self.ids(job),
            )  # fmt: skip

    async def _run_job(self, job: Job) -> None:
        logs.bind(self.ids(job))  # this job runs in its own asyncio task
        try:
            outcome = await self.work(job)
        except Exception as exc:
            reason = describe(exc, self.hidden())
            self._note_failure(job, "work", exc, reason)
            outcome = self.failed(job, reason)
        self._results.append(outcome)
        self._kick.set()

    async def _drain(self) -> None:
        """On the way out: let jobs in flight finish within the grace period, write their
        outcomes, and give back the leases of those that did not finish, so that another
        process takes them up at once rather than after the lease."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.drain_timeout)
        unfinished = list(self._inflight.values())
        for task in list(self._inflight):
            task.cancel()
        self._inflight.clear()  # a restarted loop starts with all its room
        try:
            await asyncio.shield(self.turn(claiming=False))
            if unfinished:
                async with self.db.write() as conn:
                    await self.release(conn, unfinished)
        except Exception:
            log.exception("%s: could not write the last outcomes; leases will expire", self.name)
