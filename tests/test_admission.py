"""Per-origin admission on a real database: who is woken when a slot frees."""

import asyncio
import time

from service import admission, outbox
from service.config import Settings
from service.db import Database

URL = "http://receiver.example/hook"


def _event(seq: int) -> outbox.Claimed:
    return outbox.Claimed(
        seq=seq, id=f"evt_{seq}", registration_id=f"reg_{seq}", type="video.completed",
        body="{}", attempts=0, created_at=time.time(), lease_until=time.time() + 60,
        callback_url=URL,
    )  # fmt: skip


def _accepted(event: outbox.Claimed) -> outbox.Result:
    return outbox.Result(event, time.time(), 5, 200, None, True, False, None)


def test_a_freed_slot_wakes_an_event_still_waiting_not_one_already_sent(db_url, monkeypatch):
    woken: list[list[int]] = []
    real_wake = outbox.wake

    async def wake(conn, seqs, now) -> None:
        woken.append(sorted(seqs))
        await real_wake(conn, seqs, now)

    monkeypatch.setattr(outbox, "wake", wake)
    settings = Settings(database_url=db_url, delivery_concurrency_per_origin=1)

    async def go() -> None:
        db = Database(settings)
        await db.migrate()
        gate = admission.Admission(settings, lease=30.0)
        a, b, c = _event(1), _event(2), _event(3)

        async def admit(*events: outbox.Claimed) -> list[int]:
            async with db.write() as conn:
                going, _ = await gate.admit(conn, list(events), time.time())
            for event in going:
                gate.started(event)
            return [event.seq for event in going]

        async def finish(event: outbox.Claimed) -> None:
            gate.finished(event)
            async with db.write() as conn:
                await gate.record(conn, [_accepted(event)], time.time())

        try:
            assert await admit(a, b) == [1]  # one slot: b waits
            assert await admit(b) == []  # b's wait ran out while a was still out: again
            await finish(a)
            assert woken[-1] == [2] and await admit(b, c) == [2]  # c waits now
            await finish(b)
            assert woken[-1] == [3]  # c, which waits; b was sent already
        finally:
            await db.dispose()

    asyncio.run(go())
