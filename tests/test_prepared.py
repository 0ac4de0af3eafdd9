"""Prepared statements: on SQLite they run on the driver directly, and must read and
write exactly what SQLAlchemy's own execution of the same statement does."""

import asyncio
import sqlite3

import pytest
import sqlalchemy as sa

from service.config import Settings
from service.db import Database, InlineConnection, is_away, prepared

metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False, unique=True),
    sa.Column("score", sa.Float),
    sa.Column("extra", sa.JSON),
)
BY_IDS = prepared(
    sa.select(things.c.id, things.c.name, things.c.score, things.c.extra)
    .where(things.c.id.in_(sa.bindparam("b_ids", expanding=True)), things.c.name != "skip")
    .order_by(things.c.id)
)
RESCORE = prepared(
    things.update()
    .where(things.c.id == sa.bindparam("b_id"))
    .values(score=things.c.score + sa.bindparam("b_by", type_=sa.Float))
)
RENAME = prepared(
    things.update()
    .where(things.c.id.in_(sa.bindparam("b_ids", expanding=True)))
    .values(name=sa.bindparam("b_name"))
    .returning(things.c.id, things.c.extra)
)
ROWS = [
    {"id": 1, "name": "one", "score": 1.5, "extra": {"a": [1, 2]}},
    {"id": 2, "name": "two", "score": None, "extra": None},
    {"id": 3, "name": "skip", "score": 3.0, "extra": {"b": "é"}},
    {"id": 4, "name": "four", "score": 4.0, "extra": ["x"]},
]


def run(db_url, job):
    async def go():
        db = Database(Settings(database_url=db_url))
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                await conn.execute(things.insert(), ROWS)
            return await job(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_prepared_statements_select_update_and_return_rows(db_url):
    async def job(db):
        async with db.write() as conn:
            inline = isinstance(conn, InlineConnection)
            found = [tuple(row) for row in await conn.execute(BY_IDS, {"b_ids": [4, 1, 3, 9]})]
            names = [row.name for row in (await conn.execute(BY_IDS, {"b_ids": [2]})).all()]
            await conn.execute(RESCORE, [{"b_id": 1, "b_by": 1.0}, {"b_id": 4, "b_by": 0.5}])
            rescored = (await conn.execute(RESCORE, {"b_id": 2, "b_by": 1.0})).rowcount
            renamed = (await conn.execute(RENAME, {"b_ids": [4], "b_name": "new"})).all()
        async with db.write() as conn:
            after = [
                tuple(row)
                for row in await conn.execute(
                    sa.select(things.c.id, things.c.name, things.c.score).order_by(things.c.id)
                )
            ]
        return inline, found, names, rescored, [tuple(row) for row in renamed], after

    inline, found, names, rescored, renamed, after = run(db_url, job)
    assert inline == db_url.startswith("sqlite")  # the driver path is the one under test
    # JSON comes back decoded, floats and NULLs as they were; "skip" is filtered out.
    assert found == [(1, "one", 1.5, {"a": [1, 2]}), (4, "four", 4.0, ["x"])]
    assert names == ["two"]
    if inline:  # (SQLAlchemy's asyncpg adapter does not count after an executemany)
        assert rescored == 1
    assert renamed == [(4, ["x"])]
    assert after == [(1, "one", 2.5), (2, "two", None), (3, "skip", 3.0), (4, "new", 4.5)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_driver_error_is_wrapped_as_sqlalchemy_wraps_it(db_url):
    """Workers tell a database that is away (waited out) from a bad row (that row's
    error) by SQLAlchemy's exception classes: the driver path raises the same ones."""

    async def job(db):
        async with db.write() as conn:
            with pytest.raises(sa.exc.IntegrityError) as clash:
                await conn.execute(RENAME, {"b_ids": [1, 2], "b_name": "same"})
        return clash.value

    clash = run(db_url, job)
    assert isinstance(clash.orig, sqlite3.IntegrityError) and not is_away(clash)
