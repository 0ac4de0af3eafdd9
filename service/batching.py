"""Group commit: write jobs that arrive together share one transaction and one commit.

SQLite has one writer, and a registration spends much of its time beginning and
committing its transaction. Jobs submitted within one turn of the event loop (up to
``limit``) run one after another in a single transaction, each inside a SAVEPOINT of its
own, so that one job's error (a conflict, a twin's unique key) undoes only that job's
statements. Nobody learns their job's outcome before the transaction has committed;
when the database itself fails (``fatal``), or the commit does, every job of the batch
gets that error and nothing of the batch is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Job = Callable[[Any], Awaitable[T]]  # runs its statements on the connection it is given


class _Entry(Generic[T]):
    __slots__ = ("future", "job", "outcome")

    def __init__(self, job: Job[T], future: asyncio.Future[T]) -> None:
        self.job = job
        self.future = future
        self.outcome: tuple[bool, Any] | None = None  # (succeeded, result or error)


class GroupCommit:
    """Runs write jobs in shared transactions from ``begin()`` (a context manager that
    commits on success), ``limit`` jobs at most per transaction. ``fatal(error)`` says
    whether an error of one job means the transaction itself is unusable."""

    def __init__(
        self,
        begin: Callable[[], AbstractAsyncContextManager[Any]],
        fatal: Callable[[BaseException], bool],
        limit: int = 64,
    ) -> None:
        self._begin = begin
        self._fatal = fatal
        self.limit = limit
        self.observe: Callable[[int], None] = lambda size: None  # jobs per committed batch
        self._pending: list[_Entry[Any]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def run(self, job: Job[T]) -> T:
        """The job's result once its batch has committed; its own error, or the batch's."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Entry(job, future))
        if self._drainer is None or self._drainer.done():
            # Starts on the next turn of the loop, once every request ready in this one
            # has submitted its job.
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def close(self) -> None:
        """Wait for the jobs already submitted."""
        if self._drainer is not None:
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.limit], self._pending[self.limit :]
            await self._commit(batch)

    async def _commit(self, batch: list[_Entry[Any]]) -> None:
        try:
            async with self._begin() as conn:
                for entry in batch:
                    if not entry.future.done():  # a caller that went away asks for nothing
                        await self._one(conn, entry)
        except BaseException as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.observe(len(batch))
        for entry in batch:
            if entry.outcome is None or entry.future.done():
                continue
            succeeded, value = entry.outcome
            if succeeded:
                entry.future.set_result(value)
            else:
                entry.future.set_exception(value)

    async def _one(self, conn: Any, entry: _Entry[Any]) -> None:
        try:
            async with conn.begin_nested():
                entry.outcome = (True, await entry.job(conn))
        except Exception as exc:
            if self._fatal(exc):
                raise  # the database, not this job: the whole batch fails
            entry.outcome = (False, exc)
