"""``GET /v1/videos``, ``GET /v1/videos/{task_id}`` and ``DELETE /v1/videos/{task_id}``:
the caller's videos, their cached snapshots, and their deletion upstream.

With API keys, a key sees only the videos it created or registered through status-proxy
(``ownership``): any other task id, tracked or not, is 404 on every ``/v1/videos`` route,
because status-proxy must never lend its upstream key to read someone else's task. With
the API open, an untracked task is fetched through from the upstream once. Which upstream
a ``{task_id}`` means is ``targets``' business."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from service import ownership, registrations, snapshot
from service.api import errors, targets
from service.api.deps import CallerDep
from service.api.errors import ApiError, responses
from service.api.targets import UpstreamQuery
from service.models import TASK_ID_LIMIT, TASK_ID_REGEX, Page
from service.runtime import Runtime
from service.upstream import Fetch, Upstream

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/videos", tags=["videos"])

TaskId = Annotated[
    str,
    Path(
        max_length=TASK_ID_LIMIT,
        description="The upstream task id",
        json_schema_extra={"pattern": TASK_ID_REGEX},
    ),
]

_SNAPSHOT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upstream video object, exactly as the upstream sent it",
        "content": {"application/json": {"schema": {"type": "object"}}},
        "headers": {"Age": {"schema": {"type": "integer"}, "description": "Seconds since read"}},
    }
}
_UPSTREAM_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upstream's answer, status and body as it gave them",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


SNAPSHOT_SQL = (
    "SELECT snapshot, snapshot_at FROM tasks WHERE upstream = :upstream AND task_id = :task_id"
)


def _poll_after(runtime: Runtime, upstream: str) -> dict[str, str]:
    """The official SDKs' ``poll()`` waits this long between reads of a snapshot."""
    interval = runtime.upstream_configs[upstream].poll_interval_min
    return {"openai-poll-after-ms": str(int(interval * 1000))}


@router.get(
    "/{task_id}",
    response_class=Response,
    responses=_SNAPSHOT | responses(401, 404, 422, 502, 504, 503),
)
async def get_video(task_id: TaskId, caller: CallerDep, upstream: UpstreamQuery = None) -> Response:
    """The latest stored snapshot, with no upstream request; a task not polled is fetched once."""
    found = await targets.task_upstream(caller, task_id, upstream)
    runtime = caller.runtime
    row = await runtime.db.lookup(SNAPSHOT_SQL, {"upstream": found.name, "task_id": task_id})
    if row is not None and row[0] is not None:
        return cached(runtime, found.name, *row)
    fetch = await fetch_through(runtime, found, task_id)
    # What a list of the caller's videos shows for a task status-proxy does not poll.
    seen = fetch.text.encode()
    await ownership.seen(runtime.db, caller.owner, found.name, task_id, seen, time.time())
    headers = {"Age": "0", **_poll_after(runtime, found.name)}
    return Response(fetch.text, media_type="application/json", headers=headers)


def cached(runtime: Runtime, upstream: str, stored: str, snapshot_at: float) -> Response:
    """The answer for a stored snapshot: its clean JSON text, with its ``Age`` (the
    route's, and the hot read's in service/api/hot_read.py)."""
    age = max(0, int(time.time() - snapshot_at))
    headers = {"Age": str(age), **_poll_after(runtime, upstream)}
    # Clean already since it was stored; cleaned again for rows kept by older releases.
    text = snapshot.clean(stored) or "null"
    return Response(text, media_type="application/json", headers=headers)


async def fetch_through(runtime: Runtime, upstream: Upstream, task_id: str) -> Fetch:
    """Ask the upstream once about a task status-proxy does not track; anything but a
    video object is answered as the API's error for it."""
    fetch = await upstream.fetch(task_id)
    runtime.metrics.upstream_requests.labels(upstream.name, fetch.outcome).inc()
    if fetch.outcome == "ok":
        return fetch
    raise errors.fetch_failure(fetch, upstream.name)


_AFTER = Query(max_length=TASK_ID_LIMIT, description="The last id of the previous page (`last_id`)")


@router.get("", responses=responses(401, 422, 503))
async def list_videos(
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1-100")] = 20,
    after: Annotated[str | None, _AFTER] = None,
    order: Annotated[Literal["desc", "asc"], Query(description="By creation time")] = "desc",
) -> Page[dict[str, Any]]:
    """The caller's videos (created or registered through status-proxy) on every
    upstream, newest first, each as the latest object status-proxy has for it."""
    try:
        items, has_more = await ownership.page(
            caller.runtime.db, caller.owner, limit, after, newest_first=order == "desc"
        )
    except ownership.UnknownCursor:
        raise ApiError(422, "after: you have no video with this id", "after") from None
    return Page(
        data=[item.video for item in items],
        first_id=items[0].task_id if items else None,
        last_id=items[-1].task_id if items else None,
        has_more=has_more,
    )


@router.delete(
    "/{task_id}",
    response_class=Response,
    responses=_UPSTREAM_ANSWER | errors.PASSED_THROUGH | responses(401),
)
async def delete_video(
    task_id: TaskId, caller: CallerDep, upstream: UpstreamQuery = None
) -> Response:
    """Delete the video upstream and answer as the upstream did; when it accepts (2xx),
    the caller's active registrations of the task are cancelled (no webhook follows).
    422 for an upstream that does not take OpenAI's video routes."""
    found = targets.with_openai_routes(await targets.task_upstream(caller, task_id, upstream))
    runtime = caller.runtime
    answer = await errors.forwarded(found.delete(task_id), found.name)
    if 200 <= answer.status_code < 300:
        now = time.time()
        db, owner = runtime.db, caller.owner
        cancelled = await registrations.cancel_task(db, owner, found.name, task_id, now)
        await ownership.forget(db, owner, found.name, task_id, now)
        log.info("video %s deleted upstream; %d registrations cancelled", task_id, cancelled)
    return Response(answer.body, answer.status_code, media_type=answer.content_type)
