"""Runs the workers together; a worker that dies is restarted and reported, never silent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from service.metrics import Metrics

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
    """Runs workers in one task group and stops them on an event; they drain on exit.
    A worker that dies is restarted after a backoff, and reported in /readyz while it
    is down: a process never sits with a live API and dead workers."""

    FIRST_WAIT = 0.5  # seconds before the first restart; doubles with each quick death
    MAX_WAIT = 30.0
    HEALTHY_AFTER = 60.0  # a worker that ran this long before dying starts afresh

    def __init__(
        self,
        workers: list[Worker],
        metrics: Metrics,
        first_wait: float = FIRST_WAIT,
        max_wait: float = MAX_WAIT,
    ) -> None:
        self.workers = workers
        self.metrics = metrics
        self.first_wait = first_wait
        self.max_wait = max_wait
        self.stop_event = asyncio.Event()
        self.failures: list[str] = []
        self.down: dict[str, str] = {}  # worker name -> why, while it waits to restart
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="status-proxy-workers")

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for worker in self.workers:
                    group.create_task(self._guard(worker), name=worker.name)
        except Exception as exc:  # a bug in the supervisor itself
            self.failures.append(f"workers stopped: {type(exc).__name__}")
            if not self.stop_event.is_set():
                log.exception("workers stopped")

    async def _guard(self, worker: Worker) -> None:
        """Run ``worker`` until we stop, restarting it whenever it ends on its own."""
        deaths = 0
        while not self.stop_event.is_set():
            began = time.monotonic()
            why = await self._run_once(worker)
            if why is None:
                return
            if time.monotonic() - began >= self.HEALTHY_AFTER:
                deaths = 0
            wait = min(self.max_wait, self.first_wait * 2.0**deaths)
            deaths += 1
            self.down[worker.name] = f"{why}; restarting in {wait:g}s"
            try:
                await pause(self.stop_event, wait)
            finally:
                self.down.pop(worker.name, None)
            if not self.stop_event.is_set():
                self.metrics.worker_restarts.labels(worker.name).inc()
                log.info("%s worker restarting (restart %d)", worker.name, deaths)

    async def _run_once(self, worker: Worker) -> str | None:
        """Run the worker once; why it ended, or None when it was asked to stop."""
        try:
            await worker.run(self.stop_event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s worker died", worker.name)
            first = (str(exc).strip().splitlines() or [""])[0][:200]  # /readyz stays short
            return f"{worker.name} worker died: {type(exc).__name__}: {first}"
        if self.stop_event.is_set():
            return None
        log.error("%s worker exited on its own", worker.name)
        return f"{worker.name} worker exited"

    def problems(self) -> list[str]:
        """Why the workers are not all running, or nothing."""
        if self._task is None:
            return ["workers not started"]
        if self._task.done() and not self.stop_event.is_set():
            return self.failures or ["workers stopped"]
        found = [self.down[worker.name] for worker in self.workers if worker.name in self.down]
        return found + [problem for worker in self.workers if (problem := worker.outage.problem())]

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
