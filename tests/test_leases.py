"""Only the holder of an event's lease writes its delivery outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from service import outbox, registrations
from service.delivery import Deliverer
from service.metrics import Metrics
from service.models import RegistrationCreate
from service.runtime import Runtime
from tests.conftest import test_settings
from tests.harness import SECRET

events, attempts = outbox.events, outbox.attempts


async def new_event(runtime: Runtime, callback_url: str, now: float) -> str:
    """A registration whose terminal event is pending; returns the registration id."""
    body = RegistrationCreate(task_id="video_lease", callback_url=callback_url)
    created = await registrations.create(runtime.db, "", body, now, 1.0)
    reg_id = created.registration.id
    async with runtime.db.write() as conn:
        await outbox.emit_for_registration(
            conn,
            reg_id,
            body.events,
            {},
            "video.completed",
            '{"id":"video_lease"}',
            now,
            "video_lease",
        )
    return reg_id


async def event_row(runtime: Runtime) -> Any:
    async with runtime.db.read(quick=False) as conn:
        return (await conn.execute(sa.select(events))).one()


async def attempt_rows(runtime: Runtime) -> list[Any]:
    async with runtime.db.read(quick=False) as conn:
        return list((await conn.execute(sa.select(attempts).order_by(attempts.c.attempt))).all())


async def registration_state(runtime: Runtime, reg_id: str) -> str:
    async with runtime.db.read(quick=False) as conn:
        query = sa.select(outbox.registrations.c.state).where(outbox.registrations.c.id == reg_id)
        return str((await conn.execute(query)).scalar_one())


def result(event: outbox.Claimed, accepted: bool, next_at: float | None) -> outbox.Result:
    status = 200 if accepted else 500
    error = None if accepted else "receiver answered 500"
    return outbox.Result(event, event.lease_until - 1, 5, status, error, accepted, False, next_at)


def with_runtimes(db_url: str, upstream_url: str, body: Callable[..., Awaitable[None]]) -> None:
    """Two processes' worth of database pools and HTTP clients on one database."""

    async def run() -> None:
        settings = test_settings(db_url, upstream_url, delivery_timeout=10.0)
        first, second = Runtime(settings, workers=False), Runtime(settings, workers=False)
        try:
            await first.start()
            await second.start(migrate=False)
            await body(first, second)
        finally:
            await first.stop()
            await second.stop()

    asyncio.run(run())


def test_a_worker_whose_lease_ran_out_writes_nothing(db_url, upstream):
    async def body(first: Runtime, second: Runtime) -> None:
        t0 = time.time()
        reg_id = await new_event(first, "http://127.0.0.1:9/hook", t0)
        async with first.db.write() as conn:
            [stale] = await outbox.claim(conn, t0, 10, 5.0, outbox.FIRST)
        # The first worker stalls past its lease; the second takes the event over.
        async with second.db.write() as conn:
            [current] = await outbox.claim(conn, t0 + 6, 10, 5.0, outbox.FIRST)
        assert current.lease_until == t0 + 11 and current.attempts == 0
        async with first.db.write() as conn:
            await outbox.record(conn, [result(stale, False, t0 + 100)], t0 + 7)
            await outbox.release(conn, [stale])
        row = await event_row(first)
        # Its lease, count and schedule are the new holder's: nothing cleared, nothing set back.
        assert (row.lease_until, row.attempts, row.state) == (t0 + 11, 0, "pending")
        assert row.next_attempt_at == t0 and await attempt_rows(first) == []
        async with first.db.write() as conn:  # so no third worker can claim it meanwhile
            assert await outbox.claim(conn, t0 + 8, 10, 5.0, outbox.FIRST) == []
            assert await outbox.claim(conn, t0 + 8, 10, 5.0, outbox.RETRY) == []
        async with second.db.write() as conn:
            await outbox.record(conn, [result(current, True, None)], t0 + 9)
        row = await event_row(first)
        assert (row.lease_until, row.attempts, row.state) == (None, 1, "delivered")
        assert [a.attempt for a in await attempt_rows(first)] == [1]
        assert await registration_state(first, reg_id) == "delivered"

    with_runtimes(db_url, upstream.url, body)


def test_attempts_are_counted_in_the_database_not_by_the_writer(db_url, upstream):
    async def body(first: Runtime, second: Runtime) -> None:
        t0 = time.time()
        await new_event(first, "http://127.0.0.1:9/hook", t0)
        async with first.db.write() as conn:
            [claimed] = await outbox.claim(conn, t0, 10, 5.0, outbox.FIRST)
        # Meanwhile the count moved (another holder's attempt, written before ours).
        async with first.db.write() as conn:
            await conn.execute(events.update().values(attempts=3))
        async with first.db.write() as conn:
            await outbox.record(conn, [result(claimed, False, t0 + 1)], t0 + 1)
        row = await event_row(first)
        assert row.attempts == 4 and row.lease_until is None
        assert [a.attempt for a in await attempt_rows(first)] == [4]

    with_runtimes(db_url, upstream.url, body)


def test_two_workers_and_a_lease_that_runs_out_mid_attempt(db_url, upstream, hooks):
    hooks.receiver.plan("/slow", 200, delay=1.5)

    async def body(first: Runtime, second: Runtime) -> None:
        settings = first.settings
        a = Deliverer(
            settings, first.db, first.delivery_client, SECRET, Metrics(), first.callback_guard
        )
        b = Deliverer(
            settings, second.db, second.delivery_client, SECRET, Metrics(), second.callback_guard
        )
        a.lease = 0.5  # runs out while its receiver is still answering
        reg_id = await new_event(first, f"{hooks.url}/slow", time.time())
        assert await a.turn() == 1
        [a_job] = a._inflight.values()
        while time.time() <= a_job.lease_until:  # until the lease has run out
            await asyncio.sleep(0.05)
        assert await b.turn() == 1  # the event is taken over
        [b_job] = b._inflight.values()
        if a._inflight:  # (it may have finished already on a busy machine)
            await asyncio.wait(set(a._inflight))
        await a.turn(claiming=False)  # the first worker's late outcome: not written
        row = await event_row(first)
        assert (row.lease_until, row.attempts, row.state) == (b_job.lease_until, 0, "pending")
        assert await attempt_rows(first) == []
        if b._inflight:
            await asyncio.wait(set(b._inflight))
        await b.turn(claiming=False)
        row = await event_row(first)
        assert (row.lease_until, row.attempts, row.state) == (None, 1, "delivered")
        [attempt] = await attempt_rows(first)
        assert attempt.attempt == 1 and attempt.status_code == 200
        assert await registration_state(first, reg_id) == "delivered"
        # At least once: both attempts reached the receiver, as the same webhook.
        assert len({d.headers["webhook-id"] for d in hooks.at("/slow")}) == 1

    with_runtimes(db_url, upstream.url, body)
