"""``POST /v1/videos`` and ``POST /v1/videos/{task_id}/remix``: create a video through
status-proxy with its upstream key, registering the new task in the same call.

The body (see ``intake``) goes upstream minus the fields status-proxy consumes. The
upstream's answer comes back as it was, plus ``registration`` when a callback was asked
for and the task registered, or ``registration_error`` when it could not be: the task
exists (and is paid for) either way, so its answer is never lost. Every task created
here belongs to the calling key (``ownership``), callback or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response

from service import idempotency, ownership, registrations
from service.api import errors, intake, targets
from service.api import registrations as api_registrations
from service.api.deps import Caller, CallerDep
from service.api.errors import PASSED_THROUGH, ApiError, responses
from service.api.targets import UpstreamQuery
from service.api.videos import TaskId
from service.db import UNAVAILABLE
from service.models import EVENT_ORDER, valid_task_id
from service.runtime import Runtime
from service.upstream import Answer, Upstream, video_path

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/videos", tags=["videos"])

_TEXT = {"type": "string"}
_CREATE_FIELDS = {
    "model": _TEXT,
    "prompt": _TEXT,
    "metadata": {"type": "object", "description": "Vendor parameters, forwarded upstream"},
    "callback_url": {"type": "string", "maxLength": 2048},
    "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_ORDER)}},
    "callback_metadata": {"type": "object", "description": "The registration's metadata"},
    "callback_headers": {"type": "object", "description": "Custom webhook headers"},
    "upstream": {"type": "string", "default": intake.DEFAULT_UPSTREAM},
}
_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The upstream's create body, JSON or multipart, plus the fields "
        "status-proxy consumes (callback_url, events, callback_metadata, callback_headers, "
        "upstream); in a form, objects are JSON strings or bracket fields "
        "(callback_metadata[order]=42) and events may repeat as events[]",
        "content": {
            "application/json": {"schema": {"type": "object", "properties": _CREATE_FIELDS}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **_CREATE_FIELDS,
                        "events": _TEXT,
                        "metadata": _TEXT,
                        "callback_metadata": _TEXT,
                        "callback_headers": _TEXT,
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
        "description": "The upstream's answer, plus `registration` when one was made or "
        "`registration_error` when a callback was asked for and could not be registered",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_ERRORS = PASSED_THROUGH | responses(401, 413, 415)


@router.post("", response_class=Response, responses=_CREATED | _ERRORS, openapi_extra=_CREATE_BODY)
async def create_video(request: Request, caller: CallerDep) -> Response:
    """Create a video on the upstream named in `upstream` (default `default`) with its
    key; with a `callback_url`, the new task is registered in the same call. Upstream
    errors pass through unchanged; 422 for an upstream that does not take OpenAI's video
    routes (create the task with the provider, then register it)."""
    return await _create(request, caller, "/v1/videos", None)


@router.post(
    "/{task_id}/remix",
    response_class=Response,
    responses=_CREATED | _ERRORS,
    openapi_extra=_CREATE_BODY,
)
async def remix_video(
    task_id: TaskId, request: Request, caller: CallerDep, upstream: UpstreamQuery = None
) -> Response:
    """Remix one of the caller's videos on its upstream; with a `callback_url`, the new
    task is registered in the same call."""
    source = await targets.task_upstream(caller, task_id, upstream)
    return await _create(request, caller, video_path(task_id) + "/remix", source)


async def _create(request: Request, caller: Caller, path: str, source: Upstream | None) -> Response:
    """Forward a create (``source``: the upstream of the task a remix starts from)."""
    runtime = caller.runtime
    key = request.headers.get("idempotency-key")
    if key is not None and not idempotency.valid_key(key):
        message = "Idempotency-Key must be 1-255 visible ASCII characters"
        raise ApiError(422, message, "Idempotency-Key")
    if source is not None:
        targets.with_openai_routes(source)
    body = await intake.read(request, path)
    try:
        upstream = _target(runtime, body.wanted.upstream, source)
        wanted = body.wanted.registration
        if wanted is not None:
            await api_registrations.vet_callback(wanted.callback_url, runtime.callback_guard)
        if key is not None:
            replay = await _replay(runtime, caller.owner, key, body.fingerprint)
            if replay is not None:
                return replay
        try:
            answer = await _forward(upstream, body, path)
            answer = await _register(runtime, upstream, caller.owner, answer, body.wanted)
        except BaseException:
            if key is not None:
                await asyncio.shield(idempotency.release(runtime.db, caller.owner, key))
            raise
        if key is not None:
            await _remember(runtime, caller.owner, key, body.fingerprint, answer)
        return Response(answer.body, answer.status_code, media_type=answer.content_type)
    finally:
        await body.close()


async def _replay(runtime: Runtime, owner: str, key: str, fingerprint: str) -> Response | None:
    """The first answer given for this key, or None once the key is claimed for this one."""
    try:
        stored = await idempotency.claim(runtime.db, owner, key, time.time())
    except idempotency.InFlight:
        message = "a request with this Idempotency-Key is still being answered; retry shortly"
        raise ApiError(409, message, "Idempotency-Key", headers={"Retry-After": "1"}) from None
    if stored is None:
        return None
    if fingerprint != stored.fingerprint:
        message = "this Idempotency-Key was used with a different request"
        raise ApiError(409, message, "Idempotency-Key")
    replayed = {"Idempotent-Replayed": "true"}
    return Response(stored.body, stored.status_code, replayed, stored.content_type)


async def _remember(
    runtime: Runtime, owner: str, key: str, fingerprint: str, answer: Answer
) -> None:
    """Keep a final answer for retries; drop the claim after one that says "try again".
    A database that fails now must not cost the client the answer it is about to get."""
    try:
        if idempotency.final(answer.status_code):
            stored = idempotency.Stored(
                fingerprint, answer.status_code, answer.content_type, answer.body
            )
            await idempotency.store(runtime.db, owner, key, stored, time.time())
        else:
            await idempotency.release(runtime.db, owner, key)
    except UNAVAILABLE as exc:
        log.error("idempotency key not recorded: database %s", type(exc).__name__)


def _target(runtime: Runtime, named: str | None, source: Upstream | None) -> Upstream:
    """The upstream a create goes to: the one the body names (default ``default``), or
    for a remix its task's, which a name in the body must not contradict."""
    if source is None:
        return targets.with_openai_routes(targets.known(runtime, named or "default"))
    if named is not None and named != source.name:
        message = f"upstream: a remix goes to its task's upstream, {source.name!r}"
        raise ApiError(422, message, "upstream")
    return source


async def _forward(upstream: Upstream, body: intake.Body, path: str) -> Answer:
    upload = upstream.create(body.upload(), body.content_type, body.length, path)
    return await errors.forwarded(upload, upstream.name)


def _task_id(video: Any) -> str | None:
    """The id of the task an answer describes (new-api builds before October 2025 give
    only ``task_id``), or None when it has no id status-proxy can track."""
    if not isinstance(video, dict):
        return None
    task_id = video.get("id") or video.get("task_id")
    return task_id if isinstance(task_id, str) and valid_task_id(task_id) else None


async def _register(
    runtime: Runtime, upstream: Upstream, owner: str, answer: Answer, wanted: intake.Wanted
) -> Answer:
    """Record the new task as the caller's, register it when a callback was asked for,
    and say how that went in the answer."""
    if not 200 <= answer.status_code < 300:
        return answer
    try:
        video = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        video = None
    task_id = _task_id(video)
    asked = wanted.registration is not None
    if task_id is None:
        log.warning("the upstream created a video without an id status-proxy can use")
        if not asked:
            return answer
        message = (
            "the upstream's answer has no task id status-proxy can register "
            "(1-200 characters of A-Z a-z 0-9 _ - . :); no webhook will follow"
        )
        return _not_registered(answer, video, "invalid_task_id", message)
    try:
        now = time.time()
        await ownership.claim(runtime.db, owner, upstream.name, task_id, now, json.dumps(video))
        if wanted.registration is None:
            return answer
        created = await registrations.create(
            runtime.db,
            owner,
            wanted.registration.model_copy(update={"task_id": task_id, "upstream": upstream.name}),
            now,
            runtime.upstream_configs[upstream.name].poll_interval_min,
            upstream.family,
        )
    except (registrations.Conflict, registrations.Foreign) as exc:
        return _not_registered(answer, video, "conflict", str(exc))
    except UNAVAILABLE as exc:
        # The upstream made (and charges for) the task: hand back its id rather than
        # lose it; the client can register it once the database is back.
        log.error("task %s created but not recorded: database %s", task_id, type(exc).__name__)
        if not asked:
            return answer
        message = (
            "the task was created but could not be registered: the database is unavailable; "
            "register it with POST /v1/registrations"
        )
        return _not_registered(answer, video, "database_unavailable", message)
    api_registrations.wake_workers(runtime, created)
    return _added(answer, video, "registration", created.registration.model_dump(mode="json"))


def _not_registered(answer: Answer, video: Any, code: str, message: str) -> Answer:
    """The upstream's answer with ``registration_error``: the task exists, unwatched."""
    return _added(answer, video, "registration_error", {"code": code, "message": message})


def _added(answer: Answer, video: Any, name: str, value: Any) -> Answer:
    """The upstream's answer with one field added (its body as it was, when it is not a
    JSON object and nothing can be added to it)."""
    if not isinstance(video, dict):
        log.error("the upstream's answer is not a JSON object: %s not added", name)
        return answer
    video[name] = value
    return Answer(answer.status_code, "application/json", json.dumps(video).encode())
