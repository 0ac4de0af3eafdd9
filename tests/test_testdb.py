"""The suite's own PostgreSQL setting: an unusable server is a reason, never a crash."""

import asyncio
import uuid

import pytest

from tests import conftest
from tests.harness import refused_port


@pytest.mark.postgres
def test_a_server_that_cannot_be_used_gives_the_reason(monkeypatch):
    database = conftest.postgres_url()  # skips (or fails in CI) when there is no server
    conftest.drop_postgres(database)
    role = f"sp_no_createdb_{uuid.uuid4().hex[:8]}"
    asyncio.run(conftest._admin(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    try:
        host = conftest.urlsplit(conftest.PG_ADMIN_URL).netloc.rpartition("@")[2]
        monkeypatch.setattr(conftest, "PG_ADMIN_URL", f"postgresql://{role}@{host}/postgres")
        reason = asyncio.run(conftest._check())
        assert reason is not None and "cannot be used" in reason, reason
        assert "permission denied" in reason.lower(), reason
    finally:
        monkeypatch.undo()
        asyncio.run(conftest._admin(f'DROP ROLE IF EXISTS "{role}"'))


def test_a_server_that_is_not_there_gives_the_reason(monkeypatch):
    monkeypatch.setattr(
        conftest, "PG_ADMIN_URL", f"postgresql://postgres@127.0.0.1:{refused_port()}/postgres"
    )
    reason = asyncio.run(conftest._check())
    assert reason is not None and "cannot be reached" in reason, reason
