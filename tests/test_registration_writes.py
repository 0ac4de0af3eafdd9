"""A registration's write: its statements run prepared on SQLite (on the driver, as
compiled once) and answer what SQLAlchemy's own execution answers, on both databases;
the active state is written into the SQL, so SQLite plans the twin lookup once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from service import ownership, registrations
from service.db import Database, constant
from tests.conftest import test_settings

REGISTRATION = {
    "id": "reg_1", "owner": "o", "upstream": "default", "task_id": "video_1",
    "callback_url": "http://127.0.0.1:9/hook", "events": ["video.completed"],
    "metadata": {"order": [1, "x"]}, "headers": {"X-A": "b"}, "state": "active",
    "dedupe_key": "k1", "created_at": 1.5, "updated_at": 1.5,
}  # fmt: skip
TASK = {
    "upstream": "default", "task_id": "video_1", "state": "watching", "created_at": 1.0,
    "watch_started_at": 1.0, "next_poll_at": 0.0, "interval": 5.0, "errors": 0,
    "empty_completions": 0,
}  # fmt: skip


def in_database(db_url: str, body: Any) -> None:
    async def run() -> None:
        db = Database(test_settings(db_url, "http://127.0.0.1:9"))
        try:
            await db.migrate()
            await body(db)
        finally:
            await db.dispose()

    asyncio.run(run())


def test_prepared_statements_answer_what_sqlalchemy_answers(db_url):
    async def body(db: Database) -> None:
        async with db.write() as conn:
            inserted = await conn.execute(registrations._NEW_TASK_RETURNING[db.is_sqlite], TASK)
            assert tuple(inserted.first()) == ("watching", None, None)
            again = await conn.execute(registrations._NEW_TASK_RETURNING[db.is_sqlite], TASK)
            assert again.first() is None  # ON CONFLICT DO NOTHING: no row
            await conn.execute(registrations._NEW_REGISTRATION, REGISTRATION)
            claim = ownership.claim_values("o", "default", "video_1", 1.0, created=True)
            await conn.execute(ownership._CLAIM[db.is_sqlite], claim)
            twin = (await conn.execute(registrations._ACTIVE_TWIN, {"key": "k1"})).one()
            # The same statement built afresh, so SQLAlchemy runs it its own way.
            plain = registrations._select().where(registrations.registrations.c.dedupe_key == "k1")
            expected = (await conn.execute(plain)).one()
            foreign = await ownership.created_by_another(conn, "p", "default", "video_1")
            own = await ownership.created_by_another(conn, "o", "default", "video_1")
        assert tuple(twin) == tuple(expected)
        assert twin.metadata == {"order": [1, "x"]} and twin.events == ["video.completed"]
        assert twin.snapshot is None and twin.created_at == 1.5
        assert (foreign, own) == (True, False)

    in_database(db_url, body)


def test_a_refused_row_raises_sqlalchemys_error_and_many_rows_go_in_one_call(tmp_path):
    async def body(db: Database) -> None:
        rows = [REGISTRATION | {"id": f"reg_{n}", "dedupe_key": f"k{n}"} for n in range(3)]
        async with db.write() as conn:
            assert (await conn.execute(registrations._NEW_REGISTRATION, rows)).rowcount == 3
        with pytest.raises(sa.exc.IntegrityError):  # the same id again
            async with db.write() as conn:
                await conn.execute(registrations._NEW_REGISTRATION, rows[0])
        async with db.read() as conn:
            count = await conn.exec_driver_sql("SELECT count(*) FROM registrations")
            assert count.scalar() == 3

    in_database(f"sqlite:///{tmp_path / 'prepared.db'}", body)


def test_the_active_state_is_written_into_the_sql_not_bound():
    # A bound state would make SQLite plan the lookup afresh on every run (the partial
    # index's condition names the state).
    compiled = registrations._ACTIVE_TWIN.compile(dialect=sa.create_engine("sqlite://").dialect)
    assert "registrations.state = 'active'" in compiled.string
    assert list(compiled.params) == ["key"]
    with pytest.raises(ValueError, match="not a plain constant"):
        constant("x' OR '1")
