"""The body of a create (``POST /v1/videos``, ``POST /v1/videos/{id}/remix``): what goes
upstream, and the registration fields status-proxy takes out of it.

status-proxy consumes ``callback_url``, ``events``, ``callback_metadata``,
``callback_headers`` and ``upstream``; everything else (``metadata`` included: new-api
gateways carry vendor parameters in it) goes upstream unchanged. JSON bodies are small
and read whole. Multipart bodies are re-framed as they arrive (consumed parts taken
out, the rest passed on with the client's boundary) into a spool that stays in memory
up to ``SPOOL_MEMORY`` and goes to disk beyond it, so memory stays flat whatever the
images weigh, and the upstream gets a ``Content-Length`` (servers and proxies that
cannot read chunked uploads are common). The whole body is read and its fields checked
before anything goes upstream, so a bad field never creates (and charges for) a task.

In a form, the official SDKs encode ``extra_body`` objects as bracket fields:
``callback_metadata[order]=42``, ``events[]=video.completed`` (repeated).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service import multipart
from service.api import deps
from service.api.errors import ApiError
from service.models import RegistrationCreate

CONSUMED = ("callback_url", "events", "callback_metadata", "callback_headers", "upstream")
OBJECTS = ("callback_metadata", "callback_headers")
PLACEHOLDER_TASK = "task_to_be_created"
SPOOL_MEMORY = 1024 * 1024  # an upload larger than this waits on disk, not in memory
CHUNK = 64 * 1024
DEFAULT_UPSTREAM = "default"
_BRACKETS = re.compile(r"(?:\[[^\[\]]*\])+")
_KEY = re.compile(r"\[([^\[\]]*)\]")


@dataclass(slots=True)
class Wanted:
    """What the consumed fields ask for: a registration of the new task (None without a
    ``callback_url``), its custom webhook headers taken from ``callback_headers`` in any
    encoding and checked as a registration's ``headers``; and the upstream named in
    ``upstream`` (None when the body names none; the route checks the name)."""

    registration: RegistrationCreate | None = None
    upstream: str | None = None


def consumed_name(name: str) -> str | None:
    """The consumed field a form field name belongs to (``events[]`` is ``events``)."""
    base, _, rest = name.partition("[")
    if base not in CONSUMED or (rest and not _BRACKETS.fullmatch("[" + rest)):
        return None
    return base


def media_type(request: Request) -> tuple[str, dict[bytes, bytes]]:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    return kind.decode("latin-1").lower(), options


class Body:
    """A create body ready to go upstream: its bytes (in memory or spooled), their
    length, its media type, its fingerprint (for Idempotency-Key) and what it asks of
    status-proxy. ``close()`` frees the spool."""

    def __init__(
        self,
        content_type: str,
        length: int,
        fingerprint: str,
        wanted: Wanted,
        content: bytes = b"",
        spool: anyio.SpooledTemporaryFile[bytes] | None = None,
    ) -> None:
        self.content_type = content_type
        self.length = length
        self.fingerprint = fingerprint
        self.wanted = wanted
        self._content = content
        self._spool = spool

    def upload(self) -> bytes | AsyncIterator[bytes]:
        return self._content if self._spool is None else self._chunks(self._spool)

    @staticmethod
    async def _chunks(spool: anyio.SpooledTemporaryFile[bytes]) -> AsyncIterator[bytes]:
        await spool.seek(0)
        while chunk := await spool.read(CHUNK):
            yield chunk

    async def close(self) -> None:
        if self._spool is not None:
            await self._spool.aclose()


async def read(request: Request, route: str) -> Body:
    """Read and check a create body (JSON or multipart/form-data); ``route`` joins the
    fingerprint, so one Idempotency-Key cannot stand for a create and a remix."""
    kind, options = media_type(request)
    if kind == "application/json" or kind.endswith("+json"):
        return await _read_json(request, route)
    if kind == "multipart/form-data" and options.get(b"boundary"):
        return await _read_form(request, options[b"boundary"], route)
    raise ApiError(415, "the body must be JSON or multipart/form-data with a boundary")


async def _read_json(request: Request, route: str) -> Body:
    try:
        payload = deps.loads_once(await request.body())
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "the body must be a JSON object")
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(b"json\0" + route.encode() + b"\0" + canonical.encode())
    values = {name: payload.pop(name) for name in CONSUMED if name in payload}
    for name in OBJECTS:
        if isinstance(values.get(name), str):  # a JSON object given as a string
            values[name] = _json_object(values[name], name)
    content = json.dumps(payload, ensure_ascii=False).encode()
    wanted = wanted_from(values)
    return Body("application/json", len(content), digest.hexdigest(), wanted, content=content)


async def _read_form(request: Request, boundary: bytes, route: str) -> Body:
    parts = multipart.MultipartRelay(boundary, lambda name: consumed_name(name) is not None)
    spool: anyio.SpooledTemporaryFile[bytes] = anyio.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    length = 0
    try:
        try:
            async for chunk in request.stream():
                out = parts.feed(chunk)
                if out:
                    await spool.write(out)
                    length += len(out)
            closing = parts.closing()
        except multipart.Refused as exc:
            raise ApiError(exc.status, str(exc), exc.param) from None
        except HTTPException as exc:  # the body limit
            raise ApiError(exc.status_code, str(exc.detail)) from None
        except ClientDisconnect:
            raise ApiError(400, "the request body ended early") from None
        await spool.write(closing)
        length += len(closing)
        wanted = wanted_from(form_values(parts.fields))
    except BaseException:
        await spool.aclose()
        raise
    fingerprint = hashlib.sha256(route.encode() + b"\0" + parts.fingerprint.encode()).hexdigest()
    content_type = request.headers["content-type"]
    return Body(content_type, length, fingerprint, wanted, spool=spool)


def form_values(fields: dict[str, list[str]]) -> dict[str, Any]:
    """The consumed form fields as JSON would carry them: ``events`` a list (comma-
    separated, a JSON array, or repeated ``events[]``), the objects from a JSON string
    and/or bracket fields (``callback_metadata[order]=42``; values stay strings)."""
    values: dict[str, Any] = {}
    for name, given in fields.items():
        base = consumed_name(name)
        if base in ("callback_url", "upstream"):
            if len(given) > 1 or base in values:
                raise ApiError(422, f"{base} is given more than once", base)
            values[base] = given[-1]
        elif base == "events":
            listed = values.setdefault("events", [])
            listed += [event for value in given for event in _listed(value)]
        elif base in OBJECTS:
            target = values.setdefault(base, {})
            if name == base:
                for value in given:
                    target.update(_json_object(value, base))
            else:
                _put(target, _KEY.findall(name[len(base) :]), given, base)
    return values


def _json_object(value: str, name: str) -> dict[str, Any]:
    try:
        loaded = deps.loads_text(value)
    except ValueError:
        loaded = None
    if not isinstance(loaded, dict):
        raise ApiError(422, f"{name} must be a JSON object", name)
    return loaded


def _put(target: dict[str, Any], path: list[str], given: list[str], name: str) -> None:
    """Set a bracket field's value: ``[a][b]`` nests objects, ``[a][]`` is a list."""
    listed = bool(path) and path[-1] == ""
    keys = path[:-1] if listed else path
    if not keys or not all(keys):
        raise ApiError(422, f"{name}: bracket fields name keys, as in {name}[key]", name)
    *parents, last = keys
    for key in parents:
        child = target.setdefault(key, {})
        if not isinstance(child, dict):
            raise ApiError(422, f"{name}: {key} is given both as a value and an object", name)
        target = child
    target[last] = list(given) if listed else given[-1]


def _listed(value: str) -> list[str]:
    """``events`` in a form: a JSON array, or names separated by commas."""
    value = value.strip()
    if value.startswith("["):
        try:
            items = deps.loads_text(value)
        except ValueError:
            message = "events must be a JSON array or names separated by commas"
            raise ApiError(422, message, "events") from None
        if isinstance(items, list):
            return [str(item) for item in items]
    return [item.strip() for item in value.split(",") if item.strip()]


def wanted_from(values: dict[str, Any]) -> Wanted:
    """Check the consumed fields; what they ask for."""
    named = "upstream" in values
    upstream = values.pop("upstream", None)
    if named and not isinstance(upstream, str):  # null too: leave it out for the default
        raise ApiError(422, "upstream must be the name of an upstream", "upstream")
    if "callback_url" not in values:
        if values:
            name = next(iter(values))
            raise ApiError(422, f"{name} needs a callback_url to register the task", name)
        return Wanted(upstream=upstream)
    renamed = {"callback_metadata": "metadata", "callback_headers": "headers"}
    for theirs, ours in renamed.items():
        if theirs in values:
            values[ours] = values.pop(theirs)
    try:
        registration = RegistrationCreate(task_id=PLACEHOLDER_TASK, **values)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        param = {ours: theirs for theirs, ours in renamed.items()}.get(param or "", param)
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ApiError(422, f"{param}: {message}", param) from None
    return Wanted(registration, upstream)
