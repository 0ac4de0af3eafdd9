"""Runs the workers together; a worker that dies is reported, never silent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger(__name__)


async def nap(kick: asyncio.Event, seconds: float) -> None:
    """Sleep until ``kick`` is set or ``seconds`` pass, then reset ``kick``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(kick.wait(), seconds)
    kick.clear()


class Worker(Protocol):
    name: str

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
        return []

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
