"""Create a video through status-proxy, registering it in the same call.

The body goes upstream as the client sent it, minus the three fields status-proxy
consumes (``callback_url``, ``events``, ``metadata``). JSON bodies are small and are
read whole. Multipart bodies (reference images) are relayed part by part as they
arrive, so memory stays flat whatever their size: parts we consume are kept, all
others are passed on with the client's own boundary. The closing boundary goes out
only once the consumed fields have been checked, so a bad ``callback_url`` aborts the
upload before the upstream can create (and charge for) a task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from service import callbacks
from service.api.errors import ApiError
from service.models import RegistrationCreate

CONSUMED = ("callback_url", "events", "metadata")
FIELD_LIMIT = 16 * 1024  # a consumed multipart field is a URL, a list or 4 KiB of JSON
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


async def check_callback(wanted: RegistrationCreate | None, allow_private: bool) -> None:
    if wanted is None:
        return
    try:
        await callbacks.check(wanted.callback_url, allow_private)
    except callbacks.CallbackRejected as exc:
        raise ApiError(422, str(exc), "callback_url") from None


async def read_json(request: Request) -> tuple[bytes, dict[str, Any], str]:
    """The body to send upstream, the consumed fields, and the request's fingerprint."""
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "the body must be a JSON object")
    fingerprint = fingerprint_json(payload)
    consumed = {name: payload.pop(name) for name in CONSUMED if name in payload}
    return json.dumps(payload, ensure_ascii=False).encode(), consumed, fingerprint


class MultipartRelay:
    """Re-frames a multipart body as it streams in, keeping the fields we consume and a
    fingerprint of every part (names, file names, types and bytes; not the boundary,
    which clients pick afresh on each retry)."""

    def __init__(self, boundary: bytes) -> None:
        self.boundary = boundary
        self.fields: dict[str, list[str]] = {}
        self.ended = False
        self._hash = hashlib.sha256(b"multipart\0")
        self._out: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = self._value = b""
        self._keeping: str | None = None
        self._kept = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_size=16 * 1024,
        )

    @property
    def fingerprint(self) -> str:
        return self._hash.hexdigest()

    def feed(self, chunk: bytes) -> bytes:
        """Parse a chunk; answer the bytes to pass on so far."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise ApiError(400, f"the multipart body is malformed: {exc}") from None
        out = b"".join(self._out)
        self._out.clear()
        return out

    def closing(self) -> bytes:
        if not self.ended:
            raise ApiError(400, "the multipart body ended before its closing boundary")
        return b"--" + self.boundary + b"--\r\n"

    def consumed(self) -> dict[str, Any]:
        """The consumed fields as a registration takes them."""
        found: dict[str, Any] = {}
        if "callback_url" in self.fields:
            found["callback_url"] = self.fields["callback_url"][-1]
        if "events" in self.fields:
            found["events"] = [e for value in self.fields["events"] for e in _listed(value)]
        if "metadata" in self.fields:
            try:
                found["metadata"] = json.loads(self.fields["metadata"][-1])
            except ValueError:
                raise ApiError(422, "metadata must be a JSON object", "metadata") from None
        return found

    def _feed_hash(self, *pieces: bytes) -> None:
        for piece in pieces:  # length-prefixed: no two part lists hash alike
            self._hash.update(b"%d:" % len(piece) + piece)

    def _part_begin(self) -> None:
        self._headers = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._name, self._value))
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        disposition = content_type = b""
        for name, value in self._headers:
            if name.lower() == b"content-disposition":
                disposition = value
            elif name.lower() == b"content-type":
                content_type = value
        _, options = parse_options_header(disposition)
        field = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._feed_hash(b"part", field.encode(), filename or b"\0", content_type)
        if field in CONSUMED and filename is None:
            self._keeping, self._kept = field, bytearray()
            return
        self._keeping = None
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in self._headers)
        self._out.append(b"--" + self.boundary + b"\r\n" + lines + b"\r\n")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self._hash.update(chunk)
        if self._keeping is None:
            self._out.append(bytes(chunk))
            return
        self._kept += chunk
        if len(self._kept) > FIELD_LIMIT:
            raise ApiError(422, f"{self._keeping} is too long", self._keeping)

    def _part_end(self) -> None:
        self._feed_hash(b"end")
        if self._keeping is None:
            self._out.append(b"\r\n")
            return
        try:
            value = self._kept.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"{self._keeping} is not UTF-8 text", self._keeping) from None
        self.fields.setdefault(self._keeping, []).append(value)
        self._keeping = None

    def _end(self) -> None:
        self.ended = True


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
    """The multipart body going upstream, checked at the end; a failure inside the
    stream is kept here so the route can answer it rather than a transport error."""

    def __init__(self, request: Request, boundary: bytes, allow_private: bool) -> None:
        self.request = request
        self.parts = MultipartRelay(boundary)
        self.allow_private = allow_private
        self.failure: ApiError | None = None
        self.wanted: RegistrationCreate | None = None

    async def body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.stream():
                out = self.parts.feed(chunk)
                if out:
                    yield out
            closing = self.parts.closing()
            self.wanted = registration_from(self.parts.consumed())
            await check_callback(self.wanted, self.allow_private)
        except ApiError as exc:
            self.failure = exc
            raise
        except HTTPException as exc:  # the body limit
            self.failure = ApiError(exc.status_code, str(exc.detail))
            raise self.failure from None
        except ClientDisconnect:
            self.failure = ApiError(400, "the request body ended early")
            raise self.failure from None
        yield closing

    async def drain(self) -> str:
        """Read the whole body without sending it anywhere; its fingerprint."""
        async for _ in self.body():
            pass
        return self.parts.fingerprint
