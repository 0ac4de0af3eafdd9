"""Idempotency keys for ``POST /v1/videos``: a retry gets the first answer, not a second
(paid) video. Keys are scoped per API key and kept for 24 hours.

A key is claimed with a ``pending`` row before the upstream is called; the unique key
makes two concurrent requests with one key create one task (the second is told to
retry). The answer is stored when the upstream answered; when it did not (a timeout,
a 5xx, a broken connection) the claim is dropped, so a retry may try again.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.db import Database
from service.models import IdempotencyKey

table = IdempotencyKey.__table__  # type: ignore[attr-defined]

KEEP = 24 * 3600.0
# A claim whose request never finished (the process died) frees itself after this.
PENDING_FOR = 15 * 60.0
KEY_LIMIT = 255


class InFlight(Exception):
    """Another request with this key is still being answered."""


@dataclass(frozen=True, slots=True)
class Stored:
    fingerprint: str
    status_code: int
    content_type: str
    body: bytes


RETRYABLE = frozenset({408, 425, 429})


def final(status_code: int) -> bool:
    """Whether an upstream answer is kept for retries (not one that asks to try again)."""
    return status_code < 500 and status_code not in RETRYABLE


def valid_key(key: str) -> bool:
    return 0 < len(key) <= KEY_LIMIT and all(0x21 <= ord(ch) <= 0x7E for ch in key)


def _this(owner: str, key: str) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.owner == owner, table.c.key == key)


async def claim(db: Database, owner: str, key: str, now: float) -> Stored | None:
    """The stored first answer for this key, or None after claiming the key for this
    request; raises InFlight while another request holds it."""
    try:
        async with db.write() as conn:
            row = (await conn.execute(sa.select(table).where(_this(owner, key)))).first()
            if row is not None and row.expires_at > now:
                if row.state == "done":
                    return Stored(row.fingerprint, row.status_code, row.content_type, row.body)
                raise InFlight
            if row is not None:  # expired: the key is free again
                await conn.execute(table.delete().where(_this(owner, key)))
            await conn.execute(
                table.insert().values(
                    owner=owner, key=key, state="pending", created_at=now,
                    expires_at=now + PENDING_FOR,
                )
            )  # fmt: skip
    except IntegrityError:  # a concurrent request claimed it first
        raise InFlight from None
    return None


async def store(db: Database, owner: str, key: str, answer: Stored, now: float) -> None:
    """Keep the first answer for 24 hours."""
    async with db.write() as conn:
        await conn.execute(
            table.update()
            .where(_this(owner, key))
            .values(
                state="done", fingerprint=answer.fingerprint, status_code=answer.status_code,
                content_type=answer.content_type, body=answer.body, expires_at=now + KEEP,
            )
        )  # fmt: skip


async def release(db: Database, owner: str, key: str) -> None:
    """Drop an unanswered claim so that a retry may try again."""
    async with db.write() as conn:
        await conn.execute(table.delete().where(_this(owner, key), table.c.state == "pending"))


async def purge(db: Database, now: float, batch: int = 500) -> int:
    """Delete one batch of expired keys."""
    async with db.write() as conn:
        done = await conn.execute(
            table.delete().where(
                sa.tuple_(table.c.owner, table.c.key).in_(
                    sa.select(table.c.owner, table.c.key)
                    .where(table.c.expires_at < now)
                    .limit(batch)
                )
            )
        )
    return int(done.rowcount or 0)
