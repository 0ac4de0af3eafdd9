"""Dashboard sessions: one per login, kept in the database so that every replica knows
it, ended by logout or after ``LIFETIME``.

The cookie carries a random token; the table keeps only its SHA-256, so neither a copy
of the database nor a client key (on /v1 or anywhere) is a session.
"""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa

from service.db import Database
from service.models import DashboardSession

table = DashboardSession.__table__  # type: ignore[attr-defined]

LIFETIME = 12 * 3600.0  # seconds a login lasts; then the key is asked for again
TOKEN_BYTES = 32


def _id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def start(db: Database, owner: str, now: float) -> str:
    """Open a session for ``owner`` (a key digest); returns the cookie's token. Sessions
    that have expired are removed on the way."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    async with db.write() as conn:
        await conn.execute(table.delete().where(table.c.expires_at <= now))
        await conn.execute(
            table.insert().values(
                id=_id(token), owner=owner, created_at=now, expires_at=now + LIFETIME
            )
        )
    return token


async def owner_of(db: Database, token: str, now: float) -> str | None:
    """The owner of a live session, or None (unknown, ended or expired)."""
    if not token or len(token) > 128:
        return None
    async with db.read() as conn:
        owner = (
            await conn.execute(
                sa.select(table.c.owner).where(table.c.id == _id(token), table.c.expires_at > now)
            )
        ).scalar_one_or_none()
    return None if owner is None else str(owner)


async def end(db: Database, token: str) -> None:
    """End a session (logout); an unknown token is no error."""
    if not token or len(token) > 128:
        return
    async with db.write() as conn:
        await conn.execute(table.delete().where(table.c.id == _id(token)))
