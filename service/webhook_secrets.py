"""Signing secrets per client key: created on first need, kept in the database so every
replica and restart signs alike, rotated with a grace period during which both sign.

A key is known here by its owner id (what registrations store: the hex SHA-256 of the
key), never by the key. The open API (owner ``""``) signs with STATUS_PROXY_WEBHOOK_SECRET
instead, which the runtime loads; nothing here serves it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service import signing
from service.db import Database, prepared
from service.models import WebhookSecret, WebhookSecretPublic

table = WebhookSecret.__table__  # type: ignore[attr-defined]
COLUMNS = (
    table.c.owner,
    table.c.secret,
    table.c.created_at,
    table.c.previous_secret,
    table.c.previous_expires_at,
)


@dataclass(frozen=True, slots=True)
class KeySecrets:
    """One key's stored secrets, as read (not yet checked)."""

    secret: str
    created_at: float
    previous: str | None = None
    previous_expires_at: float | None = None

    def signing(self, now: float) -> tuple[str, ...]:
        """The secrets that sign an attempt made at ``now``: the current one, then the
        previous one while its grace period lasts."""
        if self.previous is not None and (self.previous_expires_at or 0) > now:
            return (self.secret, self.previous)
        return (self.secret,)

    def checked(self, now: float) -> KeySecrets:
        """Itself when every secret that still signs is well formed; else MalformedSecret."""
        for secret in self.signing(now):
            try:
                signing.check(secret)
            except signing.MalformedSecret as exc:
                raise signing.MalformedSecret(
                    f"the stored signing secret of this key is malformed ({exc}): rotate it "
                    "with POST /v1/webhook_secret/rotate"
                ) from None
        return self

    def public(self, now: float) -> WebhookSecretPublic:
        grace = len(self.signing(now)) > 1
        return WebhookSecretPublic(
            secret=self.secret,
            created_at=int(self.created_at),
            # Rounded up: the previous secret signs until that second has passed.
            previous_expires_at=math.ceil(self.previous_expires_at or 0) if grace else None,
        )


def _from_row(row: Any) -> KeySecrets:
    return KeySecrets(row.secret, row.created_at, row.previous_secret, row.previous_expires_at)


async def read(conn: Any, owners: Iterable[str]) -> dict[str, KeySecrets]:
    """The stored secrets of these owners (owner id -> secrets); absent ones are missing."""
    wanted = sorted(set(owners))
    if not wanted:
        return {}
    rows = await conn.execute(_BY_OWNERS, {"b_owners": wanted})
    return {row.owner: _from_row(row) for row in rows}


# Built once: every delivery turn reads the secrets of its events' keys.
_BY_OWNERS = prepared(
    sa.select(*COLUMNS).where(table.c.owner.in_(sa.bindparam("b_owners", expanding=True)))
)


def by_owners(owners: Sequence[str]) -> sa.Select[Any]:
    """The rows of these owners, found by primary key (the delivery claim runs it)."""
    statement: sa.Select[Any] = _BY_OWNERS.params(b_owners=list(owners))
    return statement


async def ensure(conn: Any, owners: Iterable[str], now: float) -> dict[str, KeySecrets]:
    """The secrets of these owners, creating those that have none yet. Safe when replicas
    race: each inserts only if absent, then everyone reads what won."""
    wanted = set(owners)
    found = await read(conn, wanted)
    missing = sorted(wanted - found.keys())
    if missing:
        rows = [{"owner": o, "secret": signing.new_secret(), "created_at": now} for o in missing]
        await conn.execute(_insert_ignore(conn, rows))
        found |= await read(conn, missing)
    return found


def _insert_ignore(conn: Any, rows: list[dict[str, Any]]) -> Any:
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    return dialect.insert(table).values(rows).on_conflict_do_nothing()


async def current(db: Database, owner: str, now: float) -> KeySecrets:
    """One key's secrets, created if it has none; MalformedSecret if a stored one that
    still signs is not well formed."""
    async with db.read() as conn:
        found = (await read(conn, [owner])).get(owner)
    if found is None:
        async with db.write() as conn:
            found = (await ensure(conn, [owner], now))[owner]
    return found.checked(now)


async def rotate(db: Database, owner: str, grace_period: float, now: float) -> KeySecrets:
    """Give the key a new secret. The one it replaces keeps signing, after the new one,
    for ``grace_period`` seconds; an earlier previous secret stops at once. A malformed
    current secret is dropped rather than kept signing. A key without a secret yet gets
    its first one."""
    async with db.write() as conn:
        row = (
            await conn.execute(sa.select(*COLUMNS).where(table.c.owner == owner).with_for_update())
        ).first()
        if row is None:  # a first secret replaces nothing, so nothing else signs
            return (await ensure(conn, [owner], now))[owner]
        previous: str | None = row.secret
        try:
            signing.check(row.secret)
        except signing.MalformedSecret:
            previous = None
        expires = now + grace_period if previous is not None and grace_period > 0 else None
        rotated = KeySecrets(signing.new_secret(), now, previous if expires else None, expires)
        await conn.execute(
            table.update()
            .where(table.c.owner == owner)
            .values(
                secret=rotated.secret,
                created_at=now,
                previous_secret=rotated.previous,
                previous_expires_at=expires,
            )
        )
    return rotated


async def for_owners(
    conn: Any, owners: Sequence[str], open_secret: str, now: float
) -> dict[str, tuple[str, ...]]:
    """What signs each owner's webhooks at ``now`` (owner id -> secrets, newest first),
    read in the delivery worker's claim transaction so that a rotation on any replica
    counts from the next attempt. The open API's owner ``""`` signs with ``open_secret``.
    Secrets are checked when they sign: a malformed one fails that attempt, not the batch."""
    keyed = await ensure(conn, [owner for owner in owners if owner], now)
    signing_ = {owner: found.signing(now) for owner, found in keyed.items()}
    return signing_ | {"": (open_secret,)}
