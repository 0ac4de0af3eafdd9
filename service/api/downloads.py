"""``GET /v1/videos/{task_id}/content``: the finished video, streamed through status-proxy
with its key, so that clients need neither the upstream key nor a fresh ``video_url``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import httpx
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service import ranges
from service.api import errors, targets, videos
from service.api.deps import CallerDep
from service.api.errors import ApiError, responses, upstream_failure
from service.api.targets import UpstreamQuery
from service.api.videos import TaskId
from service.runtime import Runtime
from service.upstream import Upstream

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
TASK_STATE_SQL = (
    "SELECT state, outcome, raw_status, not_found_since, snapshot FROM tasks "
    "WHERE upstream = :upstream AND task_id = :task_id"
)


_VARIANT = Query(description="Which asset: the video (default), a thumbnail or a spritesheet")
ERROR_READ_LIMIT = 4096  # an upstream's error body is read this far, for its message


@router.get(
    "/{task_id}/content",
    response_class=Response,
    responses=_VIDEO_BYTES | responses(401, 404, 409, 416, 422, 502, 503, 504),
)
async def video_content(
    task_id: TaskId,
    caller: CallerDep,
    request: Request,
    variant: Annotated[Literal["video", "thumbnail", "spritesheet"] | None, _VARIANT] = None,
    upstream: UpstreamQuery = None,
) -> Response:
    """The finished video, streamed from the upstream with status-proxy's key. One
    `Range` is answered 206 or 416, even when the upstream ignores it and sends the
    whole file (new-api does): status-proxy then cuts the range from the stream.
    409 while the task is not completed; 422 for an upstream that does not take
    OpenAI's video routes."""
    found = targets.with_openai_routes(await targets.task_upstream(caller, task_id, upstream))
    await _completed_or_409(caller.runtime, found, task_id)
    asked = request.headers.get("range")
    try:
        answer = await found.open_content(task_id, asked, variant)
    except Exception as exc:
        failure = upstream_failure(exc)
        if failure is None:
            raise
        raise failure from None
    status = answer.status_code
    headers = {name: answer.headers[name] for name in _PASSED_ON if name in answer.headers}
    if status == 200 and asked:
        return await _cut(answer, headers, asked)
    if status in (200, 206):
        return Relayed(answer, status, headers)
    try:
        message = await _message(answer)
    finally:
        await answer.aclose()
    raise _refusal(status, message, headers, found.name)


async def _cut(upstream: httpx.Response, headers: dict[str, str], asked: str) -> Response:
    """The upstream ignored ``Range`` and sends the whole file: serve the range from it."""
    size = headers.get("content-length", "")
    if "content-encoding" in headers or not size.isdigit():
        return Relayed(upstream, 200, headers)  # a range of unknown bytes: send them all
    try:
        span = ranges.parse(asked, int(size))
    except ranges.Unsatisfiable:
        await upstream.aclose()
        range_header = {"Content-Range": f"bytes */{size}"}
        raise ApiError(
            416, "the range is outside the video", "Range", headers=range_header
        ) from None
    if span is None:
        return Relayed(upstream, 200, headers)
    headers.update(
        {"content-length": str(span.length), "content-range": span.content_range(),
         "accept-ranges": "bytes"}
    )  # fmt: skip
    return Relayed(upstream, 206, headers, span)


async def _message(upstream: httpx.Response) -> str:
    """The message of an upstream's error answer: its ``error.message`` or ``message``,
    else the start of its text."""
    raw = b""
    async for chunk in upstream.aiter_bytes():  # decoded, should it come compressed
        raw += chunk
        if len(raw) >= ERROR_READ_LIMIT:
            break
    text = raw[:ERROR_READ_LIMIT].decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    if isinstance(body, dict):
        error = body.get("error")
        found = error.get("message") if isinstance(error, dict) else body.get("message")
        body = found if isinstance(found, str) else text
    return str(body)[:300]


def _refusal(status: int, message: str, headers: dict[str, str], upstream: str) -> ApiError:
    """The API's answer for an upstream that would not send the video."""
    if status == 416:
        range_header = {"Content-Range": headers.get("content-range", "")}
        return ApiError(416, "the range is outside the video", "Range", headers=range_header)
    if status == 404:
        return ApiError(404, "the upstream has no video for this task", "task_id")
    if status == 400 and "not completed" in message.lower():
        # new-api: "Task is not completed yet, current status: IN_PROGRESS"
        return ApiError(409, f"the video is not ready: {message}", "task_id")
    if status == 401:
        return errors.upstream_refused_key(401, upstream)
    if status == 403:
        # new-api's guard against fetching some addresses answers 403 too: not the key.
        return ApiError(502, f"the upstream refused the download (403): {message}")
    return ApiError(502, f"the upstream answered {status}: {message}")


async def _completed_or_409(runtime: Runtime, upstream: Upstream, task_id: str) -> None:
    row = await runtime.db.lookup(TASK_STATE_SQL, {"upstream": upstream.name, "task_id": task_id})
    if row is not None:
        state, outcome, raw_status, not_found_since, snapshot = row
        if outcome == "completed":
            return
        if snapshot is None and not_found_since is not None and state == "watching":
            # Watched, but the upstream has never shown it: unknown there, for now.
            raise ApiError(404, "the upstream has no such task", "task_id")
        now = "failed" if outcome == "failed" or state == "given_up" else raw_status or "not done"
        raise ApiError(409, f"the video is not ready: the task is {now}", "task_id")
    fetch = await videos.fetch_through(runtime, upstream, task_id)  # not tracked: ask once
    assert fetch.video is not None  # an "ok" fetch carries its video object
    reading = upstream.family.read(fetch.video)
    if reading.kind != "completed":
        raise ApiError(409, f"the video is not ready: the task is {reading.raw_status}", "task_id")


class Relayed(StreamingResponse):
    """The upstream's bytes as they come, one chunk in memory at a time. However the
    response ends (done, or the client went away and the stream was cancelled), the
    upstream download is closed with it, shielded from that cancellation."""

    def __init__(
        self,
        upstream: httpx.Response,
        status_code: int,
        headers: dict[str, str],
        span: ranges.Span | None = None,
    ):
        chunks = self._chunks(upstream) if span is None else self._span(upstream, span)
        super().__init__(chunks, status_code, headers)
        self.upstream = upstream

    @staticmethod
    async def _chunks(upstream: httpx.Response) -> AsyncIterator[bytes]:
        async for chunk in upstream.aiter_raw():
            yield chunk
            # Buffered chunks and a gone client's no-op sends never suspend: give the
            # loop a turn, so that a disconnect is noticed and ends this stream.
            await asyncio.sleep(0)

    @classmethod
    async def _span(cls, upstream: httpx.Response, span: ranges.Span) -> AsyncIterator[bytes]:
        """Only the bytes of ``span`` from a whole file; stops reading after its end."""
        offset = 0
        async for chunk in cls._chunks(upstream):
            start, end = offset, offset + len(chunk)
            offset = end
            if end <= span.first:
                continue
            yield chunk[max(0, span.first - start) : span.last + 1 - start]
            if end > span.last:
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
