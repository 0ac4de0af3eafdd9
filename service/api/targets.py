"""Which upstream, and which of its tasks, a request means (the contract's "Upstreams").

A body names an upstream in its ``upstream`` field, a ``{task_id}`` route in
``?upstream=NAME``; either defaults to ``default``, and an unknown name is 422 with
``param`` ``upstream``. A ``{task_id}`` route without ``?upstream=`` means the caller's
task of that id: the default upstream's when the caller has that id on several.

With API keys, a key sees only the videos it created or registered through status-proxy
(``ownership``), per upstream and id; with the API open, any task not deleted here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from service import ownership
from service.api.deps import Caller
from service.api.errors import ApiError
from service.config import DEFAULT_UPSTREAM
from service.models import UPSTREAM_REGEX, valid_task_id
from service.runtime import Runtime
from service.upstream import Upstream

UpstreamQuery = Annotated[
    str | None,
    Query(
        pattern=UPSTREAM_REGEX,
        description="The upstream of the task; without it, the caller's task of this id "
        "(the default upstream's when the caller has that id on several)",
    ),
]
UpstreamFilter = Annotated[
    str | None, Query(pattern=UPSTREAM_REGEX, description="Only the registrations of this upstream")
]


def checked_task_id(task_id: str) -> str:
    if not valid_task_id(task_id):
        raise ApiError(422, "task_id has characters or a form that is not allowed", "task_id")
    return task_id


def known(runtime: Runtime, name: object) -> Upstream:
    """The upstream of that name; 422 (``param`` ``upstream``) when none is configured."""
    found = runtime.upstreams.get(name) if isinstance(name, str) else None
    if found is None:
        shown = str(name)[:40]
        names = ", ".join(sorted(runtime.upstreams))
        raise ApiError(
            422, f"upstream: no upstream is named {shown!r} (configured: {names})", "upstream"
        )
    return found


def with_openai_routes(upstream: Upstream) -> Upstream:
    """The upstream, when it takes OpenAI's video routes; else 422 saying what to do."""
    if not upstream.family.openai_routes:
        raise ApiError(
            422,
            f"upstream {upstream.name!r} ({upstream.family.name}) does not take OpenAI's "
            "video routes (create, remix, delete, content): create the task with the "
            "provider, then register it with POST /v1/registrations and "
            f'"upstream": "{upstream.name}"',
            "upstream",
        )
    return upstream


async def task_upstream(caller: Caller, task_id: str, name: str | None) -> Upstream:
    """The upstream of the caller's task ``task_id`` (``name`` when given), after
    checking that the caller may use it: 422 for a bad id or name, 404 otherwise."""
    checked_task_id(task_id)
    runtime = caller.runtime
    if name is not None:
        upstream = known(runtime, name)
    else:
        found = await ownership.upstream_of(runtime.db, caller.owner, task_id)
        upstream = runtime.upstreams.get(found or DEFAULT_UPSTREAM) or runtime.upstream
    await visible(caller, upstream.name, task_id)
    return upstream


async def visible(caller: Caller, upstream: str, task_id: str) -> None:
    """404 unless the caller may use this task: with API keys, only a video it created
    or registered through status-proxy; with the API open, any task not deleted here."""
    db = caller.runtime.db
    if caller.runtime.key_digests:
        if not await ownership.owns(db, caller.owner, upstream, task_id):
            raise ApiError(404, "you have no video with this id", "task_id")
    elif await ownership.deleted(db, caller.owner, upstream, task_id):
        raise ApiError(404, "this video was deleted", "task_id")
