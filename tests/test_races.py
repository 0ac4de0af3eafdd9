"""Registrations racing the task they watch: a registration committed while its task
ends, or while the task's last other registration is cancelled, is never left waiting
for a webhook or a poll that will not come. Each race is staged exactly: the
registration's transaction is held open after it read the task, while the other runs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import sqlalchemy as sa

from service import outbox, poller, registrations
from service.models import RegistrationCreate
from service.runtime import Runtime
from service.upstream import Fetch
from service.upstreams import openai_video
from tests.conftest import drop_postgres, postgres_url
from tests.test_leases import with_runtimes

# SQLite has one writer at a time, so these transactions cannot overlap there.
pytestmark = pytest.mark.postgres

TASK = "video_race"
tasks = poller.table


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = postgres_url()
    try:
        yield url
    finally:
        drop_postgres(url)


def body(path: str) -> RegistrationCreate:
    return RegistrationCreate(task_id=TASK, callback_url=f"http://127.0.0.1:9/{path}")


async def event_types(runtime: Runtime, reg_id: str) -> list[str]:
    async with runtime.db.read(quick=False) as conn:
        query = sa.select(outbox.events.c.type).where(outbox.events.c.registration_id == reg_id)
        return list((await conn.execute(query)).scalars())


async def task_state(runtime: Runtime) -> str:
    async with runtime.db.read(quick=False) as conn:
        query = sa.select(tasks.c.state).where(tasks.c.task_id == TASK)
        return str((await conn.execute(query)).scalar_one())


async def registered_while(runtime: Runtime, racer: Callable[[], Awaitable[object]]) -> str:
    """Register "late" and hold its transaction open, once the task row was read, while
    ``racer`` runs; commit after the racer finished or had ample time to. Answers the
    registration's id."""
    held, release = asyncio.Event(), asyncio.Event()

    async def register_and_hold() -> str:
        async with runtime.db.write() as conn:
            reg_id, _, _ = await registrations._insert(
                runtime.db,
                conn,
                "",
                "late-key",
                body("late"),
                time.time(),
                1.0,
                openai_video.FAMILY,
            )
            held.set()
            await release.wait()  # registered, not yet committed
        return reg_id

    registering = asyncio.create_task(register_and_hold())
    await held.wait()
    racing = asyncio.ensure_future(racer())
    # A racer that does not wait for the registration commits well within this.
    await asyncio.wait([racing], timeout=1.0)
    release.set()
    reg_id = await registering
    await racing
    return reg_id


def test_a_registration_made_while_its_task_ends_gets_the_terminal_event(pg_url, upstream):
    async def run(first: Runtime, second: Runtime) -> None:
        now = time.time()
        await registrations.create(first.db, "", body("first"), now, 1.0)
        async with first.db.write() as conn:
            [claimed] = await poller.claim(conn, now, 10, 30.0)
        video = {"id": TASK, "object": "video", "status": "completed", "video_url": "https://v"}
        text = json.dumps(video)
        fetch = Fetch("ok", 200, text.encode(), video=video, text=text)

        async def poll_ends_the_task() -> None:
            async with second.db.write() as conn:
                await poller.apply(conn, [(claimed, fetch)], now, second.settings)

        late = await registered_while(first, poll_ends_the_task)
        # Either the registration saw the task ended, or the end saw the registration.
        assert await event_types(first, late) == ["video.completed"]

    with_runtimes(pg_url, upstream.url, run)


def test_a_registration_made_while_the_last_other_is_cancelled_keeps_its_task_polled(
    pg_url, upstream
):
    async def run(first: Runtime, second: Runtime) -> None:
        now = time.time()
        made = await registrations.create(first.db, "", body("first"), now, 1.0)
        await registered_while(
            second, lambda: registrations.cancel(first.db, "", made.registration.id, now)
        )
        # The cancellation saw the new registration: its task is still watched.
        assert await task_state(first) == "watching"

    with_runtimes(pg_url, upstream.url, run)
