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
