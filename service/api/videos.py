"""``GET /v1/videos/{task_id}``: the cached snapshot, fetched through when untracked."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from service.api import errors
from service.api.deps import CallerDep
from service.api.errors import ApiError, responses
from service.models import TASK_ID_LIMIT, TASK_ID_REGEX, valid_task_id
from service.runtime import Runtime
from service.upstream import Fetch

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


SNAPSHOT_SQL = "SELECT snapshot, snapshot_at FROM tasks WHERE task_id = :task_id"


def checked_task_id(task_id: str) -> str:
    if not valid_task_id(task_id):
        raise ApiError(422, "task_id has characters or a form that is not allowed", "task_id")
    return task_id


@router.get(
    "/{task_id}",
    response_class=Response,
    responses=_SNAPSHOT | responses(401, 404, 422, 502, 504, 503),
)
async def get_video(task_id: TaskId, caller: CallerDep) -> Response:
    """The latest stored snapshot, with no upstream request; untracked tasks are fetched once."""
    checked_task_id(task_id)
    runtime = caller.runtime
    row = await runtime.db.lookup(SNAPSHOT_SQL, {"task_id": task_id})
    if row is not None and row[0] is not None:
        snapshot, snapshot_at = row
        age = max(0, int(time.time() - snapshot_at))
        return Response(snapshot, media_type="application/json", headers={"Age": str(age)})
    fetch = await fetch_through(runtime, task_id)
    return Response(fetch.body, media_type="application/json", headers={"Age": "0"})


async def fetch_through(runtime: Runtime, task_id: str) -> Fetch:
    """Ask the upstream once about a task status-proxy does not track; anything but a
    video object is answered as the API's error for it."""
    fetch = await runtime.upstream.fetch(task_id)
    runtime.metrics.upstream_requests.labels(fetch.outcome).inc()
    if fetch.outcome == "ok":
        return fetch
    raise errors.fetch_failure(fetch)
