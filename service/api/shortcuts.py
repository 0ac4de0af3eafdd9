"""Shortcuts: the API's hottest requests answered below FastAPI's routing.

FastAPI's routing, dependency solving and request validation cost a hot request more
than the work behind its answer (profiled: a registration spent about 40 % of its CPU in
the web layer). A shortcut answers one route's common case from a pure ASGI middleware
that sits inside the access log and the body limit: the caller's key is checked as the
``Caller`` dependency checks it, and the shortcut calls the route's own models and
functions, so it answers the same bytes. What it does not fully handle (no key or a
wrong one, a query, a body that is not plain JSON or does not validate) goes on to the
FastAPI route unchanged, with the body it read replayed, so those errors keep the
route's wording. Errors raised past that point are answered by the functions the
route's exception handlers use (``errors.refused``, ``errors.unavailable``).

A shortcut is ``Shortcut(method, path, answer)``; ``answer(call)`` returns a Response,
or None to let the route answer. ``Shortcuts(app, [...])`` tries the first that matches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.security.utils import get_authorization_scheme_param
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import deps
from service.api.errors import ApiError
from service.runtime import Runtime

AUTHORIZATION = b"authorization"
CONTENT_TYPE = b"content-type"


class Call:
    """One request a shortcut may answer: its scope, the runtime, the owner of its key
    (already checked: ``""`` when the API is open) and its body, read once."""

    __slots__ = ("_messages", "_receive", "owner", "runtime", "scope")

    def __init__(self, scope: Scope, receive: Receive, runtime: Runtime, owner: str) -> None:
        self.scope = scope
        self.runtime = runtime
        self.owner = owner
        self._receive = receive
        self._messages: list[Message] = []  # what was read, for the route if it answers

    async def json(self) -> Any:
        """The body parsed as the ``Caller`` dependency parses it (a member given twice
        is refused); None for a body that is not JSON, not sent as JSON, or not read
        simply (chunked: the body limit counts it as the route reads it)."""
        media, length, chunked = "", None, False
        for name, value in self.scope["headers"]:
            if name == CONTENT_TYPE:
                media = value.decode("latin-1").split(";")[0].strip().lower()
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if (
            chunked
            or length is None
            or not (media == "application/json" or media.endswith("+json"))
        ):
            return None
        body = await self._body()
        # Not JSON, nested past the parser's depth, or a member given twice.
        with contextlib.suppress(ValueError, RecursionError, ApiError):
            return deps.loads_once(body) if body is not None else None
        return None

    async def _body(self) -> bytes | None:
        chunks = []
        while True:
            message = await self._receive()
            self._messages.append(message)
            if message["type"] != "http.request":
                return None  # the client went away; the route sees it too
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def replay(self) -> Receive:
        """``receive`` for the route: what the shortcut read, then the rest."""
        pending = list(self._messages)

        async def receive() -> Message:
            return pending.pop(0) if pending else await self._receive()

        return receive


Answer = Callable[[Call], Awaitable[Response | None]]


@dataclass(frozen=True, slots=True)
class Shortcut:
    """``answer`` for ``method`` on ``path`` (every path under it when ``prefix``)."""

    method: str
    path: str
    answer: Answer
    prefix: bool = False

    def matches(self, scope: Scope) -> bool:
        if scope["method"] != self.method:
            return False
        path: str = scope["path"]
        return path.startswith(self.path) if self.prefix else path == self.path


class Shortcuts:
    """The middleware: the first shortcut whose method and path match may answer."""

    def __init__(self, app: ASGIApp, shortcuts: Sequence[Shortcut]) -> None:
        self.app = app
        self.shortcuts = tuple(shortcuts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A root path changes what the router matches: the route's to handle.
        if scope["type"] == "http" and not scope.get("root_path"):
            for shortcut in self.shortcuts:
                if shortcut.matches(scope):
                    call = _call(scope, receive)
                    if call is not None:
                        answer = await shortcut.answer(call)
                        if answer is not None:
                            await answer(scope, receive, send)
                            return
                        receive = call.replay()
                    break
        await self.app(scope, receive, send)


def _call(scope: Scope, receive: Receive) -> Call | None:
    runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
    if runtime is None:
        return None
    owner = caller_owner(runtime, scope["headers"])
    return None if owner is None else Call(scope, receive, runtime, owner)


def caller_owner(runtime: Runtime, headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's owner as the ``Caller`` dependency finds it (the first Authorization
    header, as HTTPBearer reads it; ``""`` when the API is open); None when the key is
    missing or not valid."""
    if not runtime.key_digests:
        return ""
    for name, value in headers:
        if name == AUTHORIZATION:
            scheme, key = get_authorization_scheme_param(value.decode("latin-1"))
            if scheme.lower() != "bearer" or not key:
                return None
            return deps.key_owner(runtime.key_digests, key)
    return None
