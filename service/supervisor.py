"""Runs the workers together; a worker that dies is reported, never silent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)


async def nap(kick: asyncio.Event, seconds: float) -> None:
    """Sleep until ``kick`` is set or ``seconds`` pass, then reset ``kick``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(kick.wait(), seconds)
    kick.clear()


class Outage:
    """A worker's run of database errors: backed off, logged once a minute, shown in /readyz."""

    REPORT_AFTER = 3  # one blip is not worth a 503
    LOG_EVERY = 60.0
    MAX_WAIT = 30.0

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.errors = 0
        self.since = 0.0
        self.last = ""
        self._logged = 0.0

    def failed(self, exc: BaseException) -> float:
        """Note an error; returns how long to wait before trying again."""
        now = time.monotonic()
        if self.errors == 0:
            self.since = now
        self.errors += 1
        self.last = type(exc).__name__
        if now - self._logged >= self.LOG_EVERY:
            self._logged = now
            # The type only: driver messages can carry statement parameters.
            log.warning("%s: database unavailable (%s); retrying", self.worker, self.last)
        return min(self.MAX_WAIT, 0.25 * 2.0 ** min(self.errors, 10))

    def recovered(self) -> None:
        if self.errors:
            log.info("%s: database available again after %d errors", self.worker, self.errors)
        self.errors = 0
        self._logged = 0.0

    def problem(self) -> str | None:
        if self.errors < self.REPORT_AFTER:
            return None
        seconds = time.monotonic() - self.since
        return f"{self.worker}: database unavailable for {seconds:.0f}s ({self.last})"


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless asked to stop first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Worker(Protocol):
    name: str
    outage: Outage

    async def run(self, stop: asyncio.Event) -> None: ...

    def kick(self) -> None: ...


class Supervisor:
    """Starts workers in one task group and stops them on an event; they drain on exit."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.stop_event = asyncio.Event()
        self.failures: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="status-proxy-workers")

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for worker in self.workers:
                    group.create_task(self._guard(worker), name=worker.name)
        except BaseException:
            if not self.stop_event.is_set():
                log.error("workers stopped after a failure: %s", "; ".join(self.failures))

    async def _guard(self, worker: Worker) -> None:
        try:
            await worker.run(self.stop_event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures.append(f"{worker.name} worker died: {type(exc).__name__}: {exc}")
            log.exception("%s worker died", worker.name)
            raise
        if not self.stop_event.is_set():
            self.failures.append(f"{worker.name} worker exited")

    def problems(self) -> list[str]:
        """Why the workers are not all running, or nothing."""
        if self._task is None:
            return ["workers not started"]
        if self._task.done() and not self.stop_event.is_set():
            return self.failures or ["workers stopped"]
        return [problem for worker in self.workers if (problem := worker.outage.problem())]

    async def wait(self) -> None:
        """Until the workers have exited."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Ask every worker to finish what it has in flight, and wait for them."""
        self.stop_event.set()
        for worker in self.workers:
            worker.kick()
        if self._task is not None:
            await self._task
