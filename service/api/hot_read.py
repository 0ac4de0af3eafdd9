"""The hot read: ``GET /v1/videos/{task_id}`` of a snapshot status-proxy holds, answered
below FastAPI's routing.

Clients polling the cached copy of their videos make the API's most frequent request,
and FastAPI's routing, dependency solving and parameter validation cost several times
the one indexed read behind its answer. This pure ASGI middleware, inside the access log
and the body limit, answers the common case itself: a valid key (or the open API), an
id of the caller's whose task has a snapshot, and no query but a configured
``?upstream=``. It answers only that, exactly as the route does (``videos.cached`` builds
both answers). Everything else goes on to the route unchanged: no key or a wrong one, an
id the caller does not own or that is not polled, any other path, method or query, a
database error. The hot read never answers an error, so every error stays the route's.
"""

from __future__ import annotations

from fastapi.security.utils import get_authorization_scheme_param
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import ownership
from service.api import deps, videos
from service.models import valid_task_id
from service.runtime import Runtime

PREFIX = "/v1/videos/"
NAMED = b"upstream="
AUTHORIZATION = b"authorization"


class HotRead:
    """Answers a cached ``GET /v1/videos/{task_id}`` without FastAPI's routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        if http and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            answer = await _cached(scope)
            if answer is not None:
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _cached(scope: Scope) -> Response | None:
    """The route's answer when it is a stored snapshot; None to let the route answer."""
    task_id = scope["path"][len(PREFIX) :]
    # A root path changes what the router matches; "/" is another route or a redirect.
    if scope.get("root_path") or "/" in task_id or not valid_task_id(task_id):
        return None
    runtime: Runtime = scope["app"].state.runtime
    named = _named_upstream(runtime, scope["query_string"])
    owner = _owner(runtime, scope["headers"])
    if named == "" or owner is None:
        return None
    try:
        found = await ownership.snapshot_of(runtime.db, owner, task_id, named)
    except Exception:  # the route meets it again, and answers it (503, or 500)
        return None
    if found is None:
        return None
    upstream, stored, snapshot_at = found
    # An upstream no longer configured: the route falls back to the default one.
    if stored is None or snapshot_at is None or upstream not in runtime.upstreams:
        return None
    return videos.cached(runtime, upstream, stored, snapshot_at)


def _named_upstream(runtime: Runtime, query: bytes) -> str | None:
    """None for no query, the name of ``?upstream=NAME`` when it is configured, else ""
    (any other query: the route's to check)."""
    if not query:
        return None
    if query[:9] != NAMED:
        return ""
    name = query[9:].decode("latin-1")
    return name if name in runtime.upstreams else ""


def _owner(runtime: Runtime, headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's owner as the ``Caller`` dependency finds it (the first Authorization
    header, as HTTPBearer reads it); None when the key is missing or not valid."""
    if not runtime.key_digests:
        return ""
    for name, value in headers:
        if name == AUTHORIZATION:
            scheme, key = get_authorization_scheme_param(value.decode("latin-1"))
            if scheme.lower() != "bearer" or not key:
                return None
            return deps.key_owner(runtime.key_digests, key)
    return None
