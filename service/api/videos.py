"""Routes under /v1/videos: the cached snapshot (fetched through when untracked), and
the gateway routes: create a video through status-proxy, download it through it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import httpx
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service import idempotency, registrations, status
from service.api import gateway
from service.api.deps import CallerDep
from service.api.errors import ApiError, responses
from service.db import UNAVAILABLE
from service.models import (
    EVENT_ORDER,
    TASK_ID_LIMIT,
    TASK_ID_REGEX,
    RegistrationCreate,
    valid_task_id,
)
from service.runtime import Runtime
from service.upstream import TRANSPORT_ERRORS, Answer, BodyTooLarge

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
    fetch = await runtime.upstream.fetch(task_id)
    runtime.metrics.upstream_requests.labels(fetch.outcome).inc()
    if fetch.outcome == "ok":
        return Response(fetch.body, media_type="application/json", headers={"Age": "0"})
    if fetch.outcome == "not_found":
        raise ApiError(404, "the upstream has no such task", "task_id")
    if fetch.outcome == "timeout":
        raise ApiError(504, "the upstream did not answer in time")
    raise ApiError(502, fetch.detail or "the upstream failed")


# --- the gateway routes: create through status-proxy, download through it -----------------

_TEXT = {"type": "string"}
_CREATE_FIELDS = {
    "model": _TEXT,
    "prompt": _TEXT,
    "callback_url": {"type": "string", "maxLength": 2048},
    "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_ORDER)}},
    "metadata": {"type": "object"},
}
_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The upstream's create body, JSON or multipart, plus the "
        "registration fields status-proxy consumes (callback_url, events, metadata)",
        "content": {
            "application/json": {"schema": {"type": "object", "properties": _CREATE_FIELDS}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **_CREATE_FIELDS,
                        "events": _TEXT,
                        "metadata": _TEXT,
                        "first_frame_image": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    },
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.KEY_LIMIT},
            "description": "A retry with the same key within 24 h gets the first answer",
        }
    ],
}
_CREATED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upstream's answer, plus `registration` when one was made",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
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


@router.post(
    "",
    response_class=Response,
    responses=_CREATED | responses(400, 401, 409, 413, 415, 422, 502, 503, 504),
    openapi_extra=_CREATE_BODY,
)
async def create_video(request: Request, caller: CallerDep) -> Response:
    """Create a video upstream with status-proxy's key; with a `callback_url`, the new
    task is registered in the same call. Upstream errors pass through unchanged."""
    runtime = caller.runtime
    allow_private = runtime.settings.callback_allow_private
    key = request.headers.get("idempotency-key")
    if key is not None and not idempotency.valid_key(key):
        message = "Idempotency-Key must be 1-255 visible ASCII characters"
        raise ApiError(422, message, "Idempotency-Key")
    kind, options = gateway.media_type(request)
    relay: gateway.Relay | None = None
    if kind == "application/json" or kind.endswith("+json"):
        content, consumed, fingerprint = await gateway.read_json(request)
        wanted = gateway.registration_from(consumed)
        body: bytes | AsyncIterator[bytes] = content
        content_type = "application/json"
    elif kind == "multipart/form-data" and options.get(b"boundary"):
        relay = gateway.Relay(request, options[b"boundary"], allow_private)
        body, content_type, fingerprint, wanted = (
            relay.body(),
            request.headers["content-type"],
            "",
            None,
        )
    else:
        raise ApiError(415, "the body must be JSON or multipart/form-data with a boundary")

    if key is not None:
        try:
            stored = await idempotency.claim(runtime.db, caller.owner, key, time.time())
        except idempotency.InFlight:
            message = "a request with this Idempotency-Key is still being answered; retry shortly"
            raise ApiError(409, message, "Idempotency-Key", headers={"Retry-After": "1"}) from None
        if stored is not None:
            if relay is not None:
                fingerprint = await relay.drain()
            if fingerprint != stored.fingerprint:
                message = "this Idempotency-Key was used with a different request"
                raise ApiError(409, message, "Idempotency-Key")
            replayed = {"Idempotent-Replayed": "true"}
            return Response(stored.body, stored.status_code, replayed, stored.content_type)
    try:
        if relay is None:
            await gateway.check_callback(wanted, allow_private)
        answer = await _forward(runtime, body, content_type, relay)
        if relay is not None:
            fingerprint, wanted = relay.parts.fingerprint, relay.wanted
        answer = await _register(runtime, caller.owner, answer, wanted)
    except BaseException:
        if key is not None:
            await asyncio.shield(idempotency.release(runtime.db, caller.owner, key))
        raise
    if key is not None:
        await _remember(runtime, caller.owner, key, fingerprint, answer)
    return Response(answer.body, answer.status_code, media_type=answer.content_type)


async def _remember(
    runtime: Runtime, owner: str, key: str, fingerprint: str, answer: Answer
) -> None:
    """Keep the answer the upstream gave for retries; drop the claim when it gave none.
    A database that fails now must not cost the client the answer it is about to get."""
    try:
        if answer.status_code < 500:
            stored = idempotency.Stored(
                fingerprint, answer.status_code, answer.content_type, answer.body
            )
            await idempotency.store(runtime.db, owner, key, stored, time.time())
        else:
            await idempotency.release(runtime.db, owner, key)
    except UNAVAILABLE as exc:
        log.error("idempotency key not recorded: database %s", type(exc).__name__)


async def _forward(
    runtime: Runtime,
    body: bytes | AsyncIterator[bytes],
    content_type: str,
    relay: gateway.Relay | None,
) -> Answer:
    try:
        return await runtime.upstream.create(body, content_type)
    except Exception as exc:
        # A failure while streaming the client's body (a bad field, the body limit, the
        # client leaving) surfaces from the transport as some error; answer the cause.
        if relay is not None and relay.failure is not None:
            raise relay.failure from None
        if isinstance(exc, ApiError):
            raise
        if isinstance(exc, ClientDisconnect):
            raise ApiError(400, "the request body ended early") from None
        if isinstance(exc, BodyTooLarge):
            raise ApiError(502, "the upstream's answer is too large") from None
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            raise ApiError(504, "the upstream did not answer in time") from None
        if isinstance(exc, TRANSPORT_ERRORS):
            name = type(exc).__name__
            raise ApiError(502, f"the upstream is unreachable: {name}") from None
        raise


async def _register(
    runtime: Runtime, owner: str, answer: Answer, wanted: RegistrationCreate | None
) -> Answer:
    """Register the task the upstream just created, and say so in the answer."""
    if wanted is None or not 200 <= answer.status_code < 300:
        return answer
    try:
        video = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        video = None
    task_id = video.get("id") or video.get("task_id") if isinstance(video, dict) else None
    if not isinstance(task_id, str) or not valid_task_id(task_id):
        log.warning("the upstream created a video without a usable id: not registered")
        return answer
    assert isinstance(video, dict)
    try:
        created = await registrations.create(
            runtime.db,
            owner,
            wanted.model_copy(update={"task_id": task_id}),
            time.time(),
            runtime.settings.poll_interval_min,
        )
    except registrations.Conflict:
        video["registration"] = None
    except UNAVAILABLE as exc:
        # The upstream made (and charges for) the task: hand back its id rather than
        # lose it; the client can register it once the database is back.
        log.error("task %s created but not registered: database %s", task_id, type(exc).__name__)
        video["registration"] = None
    else:
        runtime.kick_poller()
        if created.events:
            runtime.kick_delivery()
        video["registration"] = created.registration.model_dump(mode="json")
    body = json.dumps(video, ensure_ascii=False).encode()
    return Answer(answer.status_code, "application/json", body)


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
    except (httpx.TimeoutException, TimeoutError):
        raise ApiError(504, "the upstream did not answer in time") from None
    except TRANSPORT_ERRORS as exc:
        raise ApiError(502, f"the upstream is unreachable: {type(exc).__name__}") from None
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
    fetch = await runtime.upstream.fetch(task_id)  # not tracked: ask once
    runtime.metrics.upstream_requests.labels(fetch.outcome).inc()
    if fetch.outcome == "not_found":
        raise ApiError(404, "the upstream has no such task", "task_id")
    if fetch.outcome == "timeout":
        raise ApiError(504, "the upstream did not answer in time")
    if fetch.video is None:
        raise ApiError(502, fetch.detail or "the upstream failed")
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
