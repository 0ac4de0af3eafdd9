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
