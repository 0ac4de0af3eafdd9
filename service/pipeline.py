"""The loop the poller and the deliverer share.

Each turn is one write transaction: it records the outcomes of the jobs that finished
and leases as much new work as there is room for. Jobs run concurrently and wake the
loop as they finish, so under load every transaction carries many rows (the batching
that keeps SQLite fast) and freed room is refilled without waiting for a timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from service import supervisor
from service.db import UNAVAILABLE, Database

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")


class Pipeline(ABC, Generic[Job, Outcome]):
    """Claim, run and record jobs; subclasses say how."""

    name: str

    def __init__(self, db: Database, idle_wait: float, drain_timeout: float) -> None:
        self.db = db
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
        """Run one job; never raises."""

    @abstractmethod
    async def record(self, conn: AsyncConnection, outcomes: list[Outcome], now: float) -> int:
        """Write finished jobs' outcomes; returns how much follow-up work they queued."""

    @abstractmethod
    async def release(self, conn: AsyncConnection, jobs: list[Job]) -> None:
        """Give back the leases of jobs that will not finish (we are stopping)."""

    async def housekeeping(self, now: float) -> None:
        """Periodic work of the subclass, before each turn."""

    def started(self, job: Job, now: float) -> None:
        """A claimed job is about to run."""

    def committed(self, queued: int) -> None:
        """A turn's transaction has committed, with ``queued`` follow-up work in it."""

    def wait_hint(self) -> float:
        """How long to sleep when nothing is due."""
        return self.idle_wait

    async def run(self, stop: asyncio.Event) -> None:
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

    async def turn(self, claiming: bool = True) -> int:
        """One transaction: record what finished, claim what fits. Returns jobs started."""
        now = time.time()
        room = 0
        if claiming:
            await self.housekeeping(now)
            room = self.room()
        # Outcomes stay queued until written: a database blip delays them, never loses them.
        batch = list(self._results)
        if not batch and room <= 0:
            return 0
        claimed: list[Job] = []
        queued = 0
        async with self.db.write() as conn:
            if batch:
                queued = await self.record(conn, batch, now)
            if room > 0:
                claimed = await self.claim(conn, now, room)
        del self._results[: len(batch)]
        self.committed(queued)
        for job in claimed:
            self.started(job, now)
            task = asyncio.create_task(self._run_job(job))
            self._inflight[task] = job
            task.add_done_callback(self._forget)
        return len(claimed)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self._inflight.pop(task, None)

    async def _run_job(self, job: Job) -> None:
        self._results.append(await self.work(job))
        self._kick.set()

    async def _drain(self) -> None:
        """On the way out: let jobs in flight finish within the grace period, write their
        outcomes, and give back the leases of those that did not finish, so that another
        process takes them up at once rather than after the lease."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.drain_timeout)
        unfinished = list(self._inflight.values())
        for task in self._inflight:
            task.cancel()
        try:
            await asyncio.shield(self.turn(claiming=False))
            if unfinished:
                async with self.db.write() as conn:
                    await self.release(conn, unfinished)
        except Exception:
            log.exception("%s: could not write the last outcomes; leases will expire", self.name)
