"""``GET /v1/videos/{task_id}/content``: the finished video, streamed through status-proxy
with its key, so that clients need neither the upstream key nor a fresh ``video_url``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service import status
from service.api import videos
from service.api.deps import CallerDep
from service.api.errors import ApiError, responses, upstream_failure
from service.api.videos import TaskId, checked_task_id
from service.runtime import Runtime

router = APIRouter(prefix="/v1/videos", tags=["videos"])

_VIDEO_BYTES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}},
    }
    for status, description in ((200, "The whole video"), (206, "The range asked for"))
}
# What a download passes on from the upstream's answer.
_PASSED_ON = (
    "content-type", "content-length", "content-range", "accept-ranges", "content-encoding",
    "etag", "last-modified",
)  # fmt: skip
TASK_STATE_SQL = "SELECT state, outcome, raw_status FROM tasks WHERE task_id = :task_id"


@router.get(
    "/{task_id}/content",
    response_class=Response,
    responses=_VIDEO_BYTES | responses(401, 404, 409, 416, 422, 502, 503, 504),
)
async def video_content(task_id: TaskId, caller: CallerDep, request: Request) -> Response:
    """The finished video, streamed from the upstream with status-proxy's key; `Range`
    passes through for seeking. 409 while the task is not completed."""
    checked_task_id(task_id)
    runtime = caller.runtime
    await _completed_or_409(runtime, task_id)
    try:
        upstream = await runtime.upstream.open_content(task_id, request.headers.get("range"))
    except Exception as exc:
        failure = upstream_failure(exc)
        if failure is None:
            raise
        raise failure from None
    status = upstream.status_code
    headers = {name: upstream.headers[name] for name in _PASSED_ON if name in upstream.headers}
    if status in (200, 206):
        return Relayed(upstream, status, headers)
    await upstream.aclose()
    if status == 416:
        range_header = {"Content-Range": headers.get("content-range", "")}
        raise ApiError(416, "the range is outside the video", "Range", headers=range_header)
    if status == 404:
        raise ApiError(404, "the upstream has no video for this task", "task_id")
    if status in (401, 403):
        raise ApiError(502, f"the upstream refused our key ({status})")
    raise ApiError(502, f"the upstream answered {status}")


async def _completed_or_409(runtime: Runtime, task_id: str) -> None:
    row = await runtime.db.lookup(TASK_STATE_SQL, {"task_id": task_id})
    if row is not None:
        state, outcome, raw_status = row
        if outcome == "completed":
            return
        now = "failed" if outcome == "failed" or state == "given_up" else raw_status or "not done"
        raise ApiError(409, f"the video is not ready: the task is {now}", "task_id")
    fetch = await videos.fetch_through(runtime, task_id)  # not tracked: ask once
    assert fetch.video is not None  # an "ok" fetch carries its video object
    reading = status.read(fetch.video)
    if reading.kind != "completed":
        raise ApiError(409, f"the video is not ready: the task is {reading.raw_status}", "task_id")


class Relayed(StreamingResponse):
    """The upstream's bytes as they come, one chunk in memory at a time. However the
    response ends (done, or the client went away and the stream was cancelled), the
    upstream download is closed with it, shielded from that cancellation."""

    def __init__(self, upstream: httpx.Response, status_code: int, headers: dict[str, str]):
        super().__init__(self._chunks(upstream), status_code, headers)
        self.upstream = upstream

    @staticmethod
    async def _chunks(upstream: httpx.Response) -> AsyncIterator[bytes]:
        async for chunk in upstream.aiter_raw():
            yield chunk
            # Buffered chunks and a gone client's no-op sends never suspend: give the
            # loop a turn, so that a disconnect is noticed and ends this stream.
            await asyncio.sleep(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
