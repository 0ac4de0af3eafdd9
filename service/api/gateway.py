"""``POST /v1/videos``: create a video through status-proxy, registering it in the same call.

The body goes upstream as the client sent it, minus the three fields status-proxy
consumes (``callback_url``, ``events``, ``metadata``). JSON bodies are small and are
read whole. Multipart bodies (reference images) are relayed part by part as they
arrive, so memory stays flat whatever their size: parts we consume are kept, all
others are passed on with the client's own boundary. The closing boundary goes out
only once the consumed fields have been checked, so a bad ``callback_url`` aborts the
upload before the upstream can create (and charge for) a task.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service import callbacks, idempotency, multipart, registrations
from service.api import registrations as api_registrations
from service.api.deps import CallerDep
from service.api.errors import ApiError, responses, upstream_failure
from service.db import UNAVAILABLE
from service.models import EVENT_ORDER, RegistrationCreate, valid_task_id
from service.runtime import Runtime
from service.upstream import Answer, BodyTooLarge

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/videos", tags=["videos"])

CONSUMED = ("callback_url", "events", "metadata")
PLACEHOLDER_TASK = "task_to_be_created"


def media_type(request: Request) -> tuple[str, dict[bytes, bytes]]:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    return kind.decode("latin-1").lower(), options


def fingerprint_json(payload: dict[str, Any]) -> str:
    """What makes two JSON requests the same, whatever their spacing or key order."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(b"json\0" + canonical.encode()).hexdigest()


def registration_from(fields: dict[str, Any]) -> RegistrationCreate | None:
    """The registration the consumed fields ask for, checked; None without a callback."""
    if "callback_url" not in fields:
        if fields:
            name = next(iter(fields))
            raise ApiError(422, f"{name} needs a callback_url to register the task", name)
        return None
    try:
        return RegistrationCreate(task_id=PLACEHOLDER_TASK, **fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        raise ApiError(422, f"{param}: {first['msg']}", param) from None


async def check_callback(wanted: RegistrationCreate | None, guard: callbacks.Guard) -> None:
    if wanted is not None:
        await api_registrations.vet_callback(wanted.callback_url, guard)


class JsonIntake:
    """A JSON create body: small, so read whole, and its registration fields checked
    before anything goes upstream."""

    content_type = "application/json"
    failure: ApiError | None = None  # nothing can fail while a bytes body is sent

    def __init__(self, content: bytes, fingerprint: str, wanted: RegistrationCreate | None):
        self.content = content
        self.fingerprint = fingerprint
        self.wanted = wanted

    @classmethod
    async def read(cls, request: Request) -> JsonIntake:
        try:
            payload = json.loads(await request.body())
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(422, "the body must be a JSON object")
        fingerprint = fingerprint_json(payload)
        consumed = {name: payload.pop(name) for name in CONSUMED if name in payload}
        content = json.dumps(payload, ensure_ascii=False).encode()
        return cls(content, fingerprint, registration_from(consumed))

    def body(self) -> bytes:
        return self.content

    async def precheck(self, guard: callbacks.Guard) -> None:
        await check_callback(self.wanted, guard)

    async def drain(self) -> str:
        return self.fingerprint


def form_fields(fields: dict[str, list[str]]) -> dict[str, Any]:
    """The consumed form fields as a registration takes them."""
    found: dict[str, Any] = {}
    if "callback_url" in fields:
        found["callback_url"] = fields["callback_url"][-1]
    if "events" in fields:
        found["events"] = [e for value in fields["events"] for e in _listed(value)]
    if "metadata" in fields:
        try:
            found["metadata"] = json.loads(fields["metadata"][-1])
        except ValueError:
            raise ApiError(422, "metadata must be a JSON object", "metadata") from None
    return found


def _listed(value: str) -> list[str]:
    """``events`` in a form: a JSON array, or names separated by commas."""
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            message = "events must be a JSON array or names separated by commas"
            raise ApiError(422, message, "events") from None
        if isinstance(items, list):
            return [str(item) for item in items]
    return [item.strip() for item in value.split(",") if item.strip()]


class Relay:
    """A multipart create body, streamed upstream and checked as it ends; a failure
    inside the stream is kept here so the route can answer it rather than a transport
    error. The fingerprint and the registration fields are known once it has streamed."""

    def __init__(self, request: Request, boundary: bytes, guard: callbacks.Guard) -> None:
        self.request = request
        self.content_type = request.headers["content-type"]
        self.parts = multipart.MultipartRelay(boundary, CONSUMED)
        self.guard = guard
        self.failure: ApiError | None = None
        self.wanted: RegistrationCreate | None = None

    async def body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.stream():
                out = self.parts.feed(chunk)
                if out:
                    yield out
            closing = self.parts.closing()
            self.wanted = registration_from(form_fields(self.parts.fields))
            await check_callback(self.wanted, self.guard)
        except ApiError as exc:
            self.failure = exc
            raise
        except multipart.Refused as exc:
            self.failure = ApiError(exc.status, str(exc), exc.param)
            raise self.failure from None
        except HTTPException as exc:  # the body limit
            self.failure = ApiError(exc.status_code, str(exc.detail))
            raise self.failure from None
        except ClientDisconnect:
            self.failure = ApiError(400, "the request body ended early")
            raise self.failure from None
        yield closing

    @property
    def fingerprint(self) -> str:
        return self.parts.fingerprint

    async def precheck(self, guard: callbacks.Guard) -> None:
        """Nothing before: the fields are checked as the body ends."""

    async def drain(self) -> str:
        """Read the whole body without sending it anywhere; its fingerprint."""
        async for _ in self.body():
            pass
        return self.fingerprint


Intake = JsonIntake | Relay


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
    guard = runtime.callback_guard
    key = request.headers.get("idempotency-key")
    if key is not None and not idempotency.valid_key(key):
        message = "Idempotency-Key must be 1-255 visible ASCII characters"
        raise ApiError(422, message, "Idempotency-Key")
    kind, options = media_type(request)
    intake: Intake
    if kind == "application/json" or kind.endswith("+json"):
        intake = await JsonIntake.read(request)
    elif kind == "multipart/form-data" and options.get(b"boundary"):
        intake = Relay(request, options[b"boundary"], guard)
    else:
        raise ApiError(415, "the body must be JSON or multipart/form-data with a boundary")

    if key is not None:
        try:
            stored = await idempotency.claim(runtime.db, caller.owner, key, time.time())
        except idempotency.InFlight:
            message = "a request with this Idempotency-Key is still being answered; retry shortly"
            raise ApiError(409, message, "Idempotency-Key", headers={"Retry-After": "1"}) from None
        if stored is not None:
            if await intake.drain() != stored.fingerprint:
                message = "this Idempotency-Key was used with a different request"
                raise ApiError(409, message, "Idempotency-Key")
            replayed = {"Idempotent-Replayed": "true"}
            return Response(stored.body, stored.status_code, replayed, stored.content_type)
    try:
        await intake.precheck(guard)
        answer = await _forward(runtime, intake)
        answer = await _register(runtime, caller.owner, answer, intake.wanted)
    except BaseException:
        if key is not None:
            await asyncio.shield(idempotency.release(runtime.db, caller.owner, key))
        raise
    if key is not None:
        await _remember(runtime, caller.owner, key, intake.fingerprint, answer)
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


async def _forward(runtime: Runtime, intake: Intake) -> Answer:
    try:
        return await runtime.upstream.create(intake.body(), intake.content_type)
    except Exception as exc:
        # A failure while streaming the client's body (a bad field, the body limit, the
        # client leaving) surfaces from the transport as some error; answer the cause.
        if intake.failure is not None:
            raise intake.failure from None
        if isinstance(exc, ApiError):
            raise
        if isinstance(exc, ClientDisconnect):
            raise ApiError(400, "the request body ended early") from None
        if isinstance(exc, BodyTooLarge):
            raise ApiError(502, "the upstream's answer is too large") from None
        failure = upstream_failure(exc)
        if failure is None:
            raise
        raise failure from None


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
        api_registrations.wake_workers(runtime, created)
        video["registration"] = created.registration.model_dump(mode="json")
    body = json.dumps(video, ensure_ascii=False).encode()
    return Answer(answer.status_code, "application/json", body)
