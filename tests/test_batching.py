"""Group commit: concurrent API writes share a transaction on SQLite (one commit for many
requests), each in a SAVEPOINT, so one request's conflict or error fails only itself;
every request is answered only once its write has committed. PostgreSQL runs each alone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import sqlalchemy as sa

from service import registrations
from service.models import RegistrationCreate
from service.runtime import Runtime
from service.upstreams import openai_video
from tests.conftest import test_settings
from tests.harness import metric, sql

HOOK = "http://127.0.0.1:9/hook"


def batches(runtime: Runtime) -> tuple[float, float]:
    """(transactions, jobs) committed by group commit so far."""
    sample = runtime.metrics.registry.get_sample_value
    return (
        sample("status_proxy_write_batch_jobs_count") or 0.0,
        sample("status_proxy_write_batch_jobs_sum") or 0.0,
    )


async def create(runtime: Runtime, task_id: str, **fields: Any) -> registrations.Created:
    body = RegistrationCreate(task_id=task_id, callback_url=HOOK, **fields)
    return await registrations.create(runtime.db, "", body, time.time(), 1.0, openai_video.FAMILY)


async def stored(runtime: Runtime) -> dict[str, str]:
    async with runtime.db.read(quick=False) as conn:
        rows = await conn.execute(sa.text("SELECT id, state FROM registrations"))
        return {row.id: row.state for row in rows}


def in_runtime(db_url: str, upstream_url: str, body: Any) -> None:
    async def run() -> None:
        runtime = Runtime(test_settings(db_url, upstream_url), workers=False)
        try:
            await runtime.start()
            await body(runtime)
        finally:
            await runtime.stop()

    asyncio.run(run())


def test_a_twin_a_conflict_and_a_broken_job_in_one_batch_fail_only_themselves(db_url, upstream):
    async def body(runtime: Runtime) -> None:
        async def duplicate_id(conn: Any) -> None:
            # A change, then a row the database refuses (its primary key is taken): this
            # job's own error, and its change is undone with it.
            await conn.execute(sa.text("UPDATE registrations SET state = 'cancelled'"))
            await conn.execute(sa.text("INSERT INTO registrations SELECT * FROM registrations"))

        first = await create(runtime, "video_seed")  # a row for duplicate_id to copy
        results = await asyncio.gather(
            *(create(runtime, f"video_{n}") for n in range(20)),
            create(runtime, "video_twin", metadata={"v": 1}),
            create(runtime, "video_twin", metadata={"v": 1}),
            create(runtime, "video_conflict", metadata={"v": 1}),
            create(runtime, "video_conflict", metadata={"v": 2}),
            runtime.db.write_grouped(duplicate_id),
            return_exceptions=True,
        )
        fresh, twins, conflicts, broken = results[:20], results[20:22], results[22:24], results[24]
        assert all(isinstance(r, registrations.Created) and r.created for r in fresh)
        assert len({r.registration.id for r in fresh}) == 20
        assert sorted(r.created for r in twins) == [False, True]
        assert twins[0].registration.id == twins[1].registration.id
        kinds = sorted(type(r).__name__ for r in conflicts)
        assert kinds == ["Conflict", "Created"]
        assert isinstance(broken, sa.exc.IntegrityError)

        ids = await stored(runtime)
        expected = {first.registration.id} | {r.registration.id for r in fresh}
        expected |= {
            r.registration.id for r in twins + conflicts if isinstance(r, registrations.Created)
        }
        assert set(ids) == expected
        assert set(ids.values()) == {"active"}
        if runtime.db.is_sqlite:  # all of them submitted in one turn: one commit
            assert batches(runtime) == (2.0, 26.0)
        else:
            assert batches(runtime) == (0.0, 0.0)

    in_runtime(db_url, upstream.url, body)


def test_when_the_database_fails_a_batch_no_request_of_it_is_answered_as_written(
    tmp_path, upstream
):
    db_url = f"sqlite:///{tmp_path / 'batch.db'}"

    async def body(runtime: Runtime) -> None:
        async def broken(conn: Any) -> None:
            await conn.execute(sa.text("SELECT * FROM no_such_table"))  # SQLite: OperationalError

        results = await asyncio.gather(
            create(runtime, "video_a"),
            runtime.db.write_grouped(broken),
            create(runtime, "video_b"),
            return_exceptions=True,
        )
        assert all(isinstance(r, sa.exc.OperationalError) for r in results)
        assert await stored(runtime) == {}  # nothing of the batch was kept
        created = await create(runtime, "video_a")  # and the next batch works
        assert created.created and list(await stored(runtime)) == [created.registration.id]

    in_runtime(db_url, upstream.url, body)


def test_concurrent_registrations_and_cancels_are_all_answered_and_all_land(service, db_url):
    fresh = [f"video_many_{n}" for n in range(60)]

    async def fire() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(
            base_url=service.url, headers=service.client.headers, timeout=30
        ) as client:

            def post(task_id: str, **fields: Any) -> Any:
                return client.post(
                    "/v1/registrations", json={"task_id": task_id, "callback_url": HOOK, **fields}
                )

            created = await asyncio.gather(
                *(post(task_id) for task_id in fresh),
                post("video_twin", metadata={"v": 1}),
                post("video_twin", metadata={"v": 1}),
                post("video_conflict", metadata={"v": 1}),
                post("video_conflict", metadata={"v": 2}),
            )
            ids = [response.json()["id"] for response in created[:30]]
            cancelled = await asyncio.gather(
                *(client.delete(f"/v1/registrations/{reg_id}") for reg_id in ids),
                client.delete("/v1/registrations/reg_" + "0" * 26),  # unknown: 404
            )
            return created, cancelled

    created, cancelled = asyncio.run(fire())
    assert [r.status_code for r in created[:60]] == [201] * 60, created[0].text
    ids = {r.json()["id"] for r in created[:60]}
    assert len(ids) == 60
    twins, conflicts = created[60:62], created[62:64]
    assert sorted(r.status_code for r in twins) == [200, 201]
    assert twins[0].json()["id"] == twins[1].json()["id"]
    assert sorted(r.status_code for r in conflicts) == [201, 409]
    assert [r.status_code for r in cancelled[:30]] == [200] * 30
    assert {r.json()["state"] for r in cancelled[:30]} == {"cancelled"}
    assert cancelled[30].status_code == 404

    [rows] = sql(db_url, "SELECT id, state FROM registrations")
    landed = {row[0]: row[1] for row in rows}
    assert ids <= set(landed) and len(landed) == 62
    assert sorted(landed.values()).count("cancelled") == 30
    writes = metric(service, "status_proxy_write_batch_jobs_sum")
    assert writes == (64 + 31 if db_url.startswith("sqlite") else 0)
