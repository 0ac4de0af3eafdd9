"""The migrations build exactly the schema the models describe, on both databases."""

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from service import models  # noqa: F401  (registers the tables)
from service.config import Settings
from service.db import Database


def test_migrations_match_the_models(db_url):
    async def differences():
        db = Database(Settings(database_url=db_url))
        try:
            await db.migrate()
            async with db.engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}),
                        SQLModel.metadata,
                    )
                )
        finally:
            await db.dispose()

    assert asyncio.run(differences()) == []


def test_tasks_registered_before_0006_become_their_keys_videos(db_url):
    import sqlalchemy as sa
    from alembic import command

    from service.db import alembic_config

    def upgrade_to(sync_conn, revision):
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        command.upgrade(config, revision)

    async def run():
        db = Database(Settings(database_url=db_url))
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(upgrade_to, "0004")
                for n, (owner, task) in enumerate(
                    [("k1", "video_a"), ("k1", "video_a"), ("k2", "video_a"), ("k1", "video_b")]
                ):
                    await conn.execute(
                        sa.text(
                            "INSERT INTO registrations (id, owner, task_id, callback_url, events,"
                            " metadata, state, dedupe_key, created_at, updated_at) VALUES (:id,"
                            " :owner, :task, 'https://example.com/h', '[\"video.completed\"]', '{}',"
                            " 'delivered', :id, :at, :at)"
                        ),
                        {"id": f"reg_{n}", "owner": owner, "task": task, "at": 100.0 + n},
                    )
            await db.migrate()
            async with db.engine.connect() as conn:
                rows = await conn.execute(
                    sa.text(
                        "SELECT owner, task_id, created_at FROM owned_videos ORDER BY owner, task_id"
                    )
                )
                return [tuple(row) for row in rows]
        finally:
            await db.dispose()

    assert asyncio.run(run()) == [
        ("k1", "video_a", 100.0),
        ("k1", "video_b", 103.0),
        ("k2", "video_a", 102.0),
    ]


def test_data_of_0009_lands_on_the_default_upstream(db_url):
    """Rows written as revision 0009 wrote them belong to the upstream named default, and
    afterwards the same task id on another upstream is another task."""
    import sqlalchemy as sa
    from alembic import command

    from service.db import alembic_config

    def upgrade_to(sync_conn, revision):
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        command.upgrade(config, revision)

    task = (
        "INSERT INTO tasks (task_id, state, raw_status, snapshot, created_at, watch_started_at,"
        " next_poll_at, interval, errors, empty_completions) VALUES (:task, 'watching',"
        " 'queued', '{\"id\":\"video_a\"}', 1.0, 1.0, 0.0, 5.0, 0, 0)"
    )
    registration = (
        "INSERT INTO registrations (id, owner, task_id, callback_url, events, metadata, headers,"
        " state, dedupe_key, created_at, updated_at) VALUES (:id, 'k1', :task,"
        " 'https://example.com/h', '[\"video.completed\"]', '{}', '{}', 'active', :id, 1.0, 1.0)"
    )
    event = (
        "INSERT INTO events (id, registration_id, type, body, state, attempts, lane,"
        " next_attempt_at, created_at) VALUES ('evt_1', 'reg_1', 'video.completed', '{}',"
        " 'delivered', 1, 0, 1.0, 1.0)"
    )
    attempt = (
        "INSERT INTO attempts (id, event_id, registration_id, type, attempt, status_code,"
        " duration_ms, created_at) VALUES ('att_1', 'evt_1', 'reg_1', 'video.completed', 1,"
        " 200, 5, 1.0)"
    )
    owned = (
        "INSERT INTO owned_videos (owner, upstream, task_id, created_at, updated_at, created)"
        " VALUES ('k1', :upstream, :task, 2.0, 2.0, false)"
    )

    async def run():
        db = Database(Settings(database_url=db_url))
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(upgrade_to, "0009")
                await conn.execute(sa.text(task), {"task": "video_a"})
                await conn.execute(sa.text(registration), {"id": "reg_1", "task": "video_a"})
                # An event and its attempt refer to the registration (SQLite checks it).
                await conn.execute(sa.text(event))
                await conn.execute(sa.text(attempt))
                await conn.execute(
                    sa.text(
                        "INSERT INTO owned_videos (owner, task_id, created_at, updated_at,"
                        " created) VALUES ('k1', 'video_a', 2.0, 2.0, false)"
                    )
                )
            await db.migrate()
            async with db.engine.begin() as conn:
                found = [
                    tuple(row)
                    for statement in (
                        "SELECT upstream, task_id, state FROM tasks",
                        "SELECT upstream, task_id, id FROM registrations",
                        "SELECT upstream, task_id, owner FROM owned_videos",
                        "SELECT registration_id, id, state FROM events",
                    )
                    for row in await conn.execute(sa.text(statement))
                ]
                # The new keys: the same id on another upstream is another row.
                await conn.execute(
                    sa.text(
                        task.replace("(task_id,", "(upstream, task_id,").replace(
                            "(:task,", "('other', :task,"
                        )
                    ),
                    {"task": "video_a"},
                )
                await conn.execute(sa.text(owned), {"upstream": "other", "task": "video_a"})
                counts = [
                    (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()
                    for table in ("tasks", "owned_videos")
                ]
                try:
                    await conn.execute(sa.text(owned), {"upstream": "other", "task": "video_a"})
                except sa.exc.IntegrityError:
                    duplicate_refused = True
                else:
                    duplicate_refused = False
            return found, counts, duplicate_refused
        finally:
            await db.dispose()

    found, counts, duplicate_refused = asyncio.run(run())
    assert found == [
        ("default", "video_a", "watching"),
        ("default", "video_a", "reg_1"),
        ("default", "video_a", "k1"),
        ("reg_1", "evt_1", "delivered"),
    ]
    assert counts == [2, 2]
    assert duplicate_refused
