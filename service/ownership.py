"""Which key owns which video: the tasks a key created or registered through status-proxy.

With API keys, a key may read, list, download, remix and delete only its own videos;
status-proxy never lends its upstream key to read anyone else's task. With the API
open every caller is the owner ``""``, and these records only feed the list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service import snapshot
from service.db import Database, prepared
from service.models import OwnedVideo, Task

owned = OwnedVideo.__table__  # type: ignore[attr-defined]
task_table = Task.__table__  # type: ignore[attr-defined]

# Built once, values as parameters (see registrations: statements cost more than runs).
_CLAIM = {  # by "is SQLite": a second claim of the same video keeps the first
    True: prepared(sqlite.insert(owned).on_conflict_do_nothing()),
    False: postgresql.insert(owned).on_conflict_do_nothing(),
}
_CREATED_BY_ANOTHER = prepared(
    sa.select(owned.c.owner)
    .where(
        owned.c.task_id == sa.bindparam("task_id"),
        owned.c.upstream == sa.bindparam("upstream"),
        owned.c.created,
        owned.c.owner != sa.bindparam("owner"),
    )
    .limit(1)
)
OWNED_SQL = (
    "SELECT deleted_at FROM owned_videos "
    "WHERE owner = :owner AND upstream = :upstream AND task_id = :task_id"
)
# The upstreams on which a key has a video of this id, the default upstream's first,
# then the oldest: what a {task_id} route without ?upstream= means.
UPSTREAMS_SQL = (
    "SELECT upstream FROM owned_videos WHERE owner = :owner AND task_id = :task_id "
    "AND deleted_at IS NULL "
    "ORDER BY CASE WHEN upstream = 'default' THEN 0 ELSE 1 END, created_at, upstream LIMIT 1"
)
# The same video, or the named upstream's, with its task's latest snapshot in one read by
# key (the hot read's); the snapshot columns are NULL for a task that is not polled.
_SNAPSHOTS = (
    "SELECT o.upstream, t.snapshot, t.snapshot_at FROM owned_videos AS o "
    "LEFT JOIN tasks AS t ON t.upstream = o.upstream AND t.task_id = o.task_id "
    "WHERE o.owner = :owner AND o.task_id = :task_id AND o.deleted_at IS NULL "
)
SNAPSHOT_SQL = (
    _SNAPSHOTS + "ORDER BY CASE WHEN o.upstream = 'default' THEN 0 ELSE 1 END, "
    "o.created_at, o.upstream LIMIT 1"
)
SNAPSHOT_ON_SQL = _SNAPSHOTS + "AND o.upstream = :upstream"


class UnknownCursor(Exception):
    """``after`` names no video of this key."""


@dataclass(frozen=True, slots=True)
class Listed:
    """One video of a list page: its id and the latest object status-proxy has for it."""

    task_id: str
    video: dict[str, Any]
    upstream: str = "default"


def claim_values(
    owner: str,
    upstream: str,
    task_id: str,
    now: float,
    video: str | None = None,
    created: bool = False,
) -> dict[str, Any]:
    return {
        "owner": owner, "upstream": upstream, "task_id": task_id, "video": video,
        "created_at": now, "updated_at": now, "deleted_at": None, "created": created,
    }  # fmt: skip


async def claim_in(conn: Any, is_sqlite: bool, values: dict[str, Any]) -> None:
    """Record ownership inside the caller's transaction (a registration's)."""
    await conn.execute(_CLAIM[is_sqlite], values)


async def claim(
    db: Database, owner: str, upstream: str, task_id: str, now: float, video: str | None
) -> None:
    """Record that ``owner`` created the task (``video``: the create answer)."""
    async with db.write() as conn:
        values = claim_values(owner, upstream, task_id, now, video, True)
        await claim_in(conn, db.is_sqlite, values)


async def created_by_another(conn: Any, owner: str, upstream: str, task_id: str) -> bool:
    """Whether another key created the task through status-proxy (then it is theirs
    alone: registering it must not make it ``owner``'s video)."""
    params = {"owner": owner, "upstream": upstream, "task_id": task_id}
    return (await conn.execute(_CREATED_BY_ANOTHER, params)).first() is not None


async def upstream_of(db: Database, owner: str, task_id: str) -> str | None:
    """The upstream of ``owner``'s video of this id (the default upstream's when it has
    one there too, else the oldest), or None when it has none."""
    row = await db.lookup(UPSTREAMS_SQL, {"owner": owner, "task_id": task_id})
    return None if row is None else str(row[0])


async def owns(db: Database, owner: str, upstream: str, task_id: str) -> bool:
    """Whether ``owner`` created or registered the task and has not deleted it."""
    row = await db.lookup(OWNED_SQL, {"owner": owner, "upstream": upstream, "task_id": task_id})
    return row is not None and row[0] is None


async def deleted(db: Database, owner: str, upstream: str, task_id: str) -> bool:
    """Whether ``owner`` deleted the task through status-proxy."""
    row = await db.lookup(OWNED_SQL, {"owner": owner, "upstream": upstream, "task_id": task_id})
    return row is not None and row[0] is not None


def _the(owner: str, upstream: str, task_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(owned.c.owner == owner, owned.c.upstream == upstream, owned.c.task_id == task_id)


async def seen(
    db: Database, owner: str, upstream: str, task_id: str, video: bytes, now: float
) -> None:
    """Keep the object a fetch-through just read, for the list of a task not polled."""
    async with db.write() as conn:
        await conn.execute(
            owned.update()
            .where(_the(owner, upstream, task_id))
            .values(video=video.decode("utf-8", "replace"), updated_at=now)
        )


async def forget(db: Database, owner: str, upstream: str, task_id: str, now: float) -> None:
    """The video was deleted upstream: it leaves the list, and its routes answer 404.
    The row stays, so a list page that ended on it can still be followed."""
    async with db.write() as conn:
        await conn.execute(
            owned.update()
            .where(_the(owner, upstream, task_id))
            .values(deleted_at=now, updated_at=now)
        )


async def page(
    db: Database, owner: str, limit: int, after: str | None, newest_first: bool = True
) -> tuple[list[Listed], bool]:
    """One page of the owner's videos of every upstream, newest first (or oldest first);
    ``after`` is the last id of the previous page. Raises UnknownCursor when ``after`` is
    not theirs.

    A cursor is only an id, so the list holds each id once: an id the key has on
    several upstreams stands at its newest place, with that upstream's object (the
    others are read with ``GET /v1/videos/{id}?upstream=``). Paging then never repeats,
    skips or circles, whatever the page size."""
    key = (owned.c.created_at, owned.c.task_id, owned.c.upstream)
    polled = sa.and_(
        task_table.c.task_id == owned.c.task_id, task_table.c.upstream == owned.c.upstream
    )
    other = owned.alias("other")
    newer_place = (
        sa.select(other.c.task_id)
        .where(
            other.c.owner == owned.c.owner,
            other.c.task_id == owned.c.task_id,
            other.c.deleted_at.is_(None),
            sa.tuple_(other.c.created_at, other.c.upstream)
            > sa.tuple_(owned.c.created_at, owned.c.upstream),
        )
        .exists()
    )
    listed = sa.and_(owned.c.owner == owner, owned.c.deleted_at.is_(None), ~newer_place)
    query = (
        sa.select(*key, owned.c.video, task_table.c.snapshot)
        .select_from(owned.outerjoin(task_table, polled))
        .where(listed)
    )
    order = [column.desc() if newest_first else column.asc() for column in key]
    async with db.read() as conn:
        if after is not None:
            place = sa.select(*key).where(owned.c.owner == owner, owned.c.task_id == after)
            # Its place in the list; an id deleted since still marks where it stood.
            cursor = (await conn.execute(place.where(listed).limit(1))).first() or (
                await conn.execute(place.order_by(*order).limit(1))
            ).first()
            if cursor is None:
                raise UnknownCursor
            position = sa.tuple_(*key)
            query = query.where(
                position < tuple(cursor) if newest_first else position > tuple(cursor)
            )
        rows = (await conn.execute(query.order_by(*order).limit(limit + 1))).all()
    items = [
        Listed(row.task_id, _latest(row.task_id, row.snapshot, row.video), row.upstream)
        for row in rows
    ]
    return items[:limit], len(items) > limit


def _latest(task_id: str, polled: str | None, seen: str | None) -> dict[str, Any]:
    """The poller's snapshot when the task is polled, else what was last seen outside
    polling, else just the id (registered, not polled yet)."""
    for raw in (polled, seen):
        loaded = snapshot.load(raw)
        if loaded is not None:
            return loaded
    return {"id": task_id, "object": "video"}


async def snapshot_of(
    db: Database, owner: str, task_id: str, upstream: str | None
) -> tuple[str, str | None, float | None] | None:
    """The owner's video of this id that a ``{task_id}`` route means (the one on
    ``upstream`` when it is named): its upstream and its task's stored snapshot and
    time, both None when the task is not polled; None when the owner has no such video."""
    if upstream is None:
        row = await db.lookup(SNAPSHOT_SQL, {"owner": owner, "task_id": task_id})
    else:
        values = {"owner": owner, "task_id": task_id, "upstream": upstream}
        row = await db.lookup(SNAPSHOT_ON_SQL, values)
    return None if row is None else (str(row[0]), row[1], row[2])
