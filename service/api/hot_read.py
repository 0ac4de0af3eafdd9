"""The hot read: ``GET /v1/videos/{task_id}`` of a snapshot status-proxy holds, answered
below FastAPI's routing.

Clients polling the cached copy of their videos make the API's most frequent request,
and FastAPI's routing, dependency solving and parameter validation cost several times
the one indexed read behind its answer. This shortcut (``shortcuts``: pure ASGI, inside
the access log and the body limit, the key checked as ``Caller`` checks it) answers the
common case itself: a valid key (or the open API), an
id of the caller's whose task has a snapshot, and no query but a configured
``?upstream=``. It answers only that, exactly as the route does (``videos.cached`` builds
both answers). Everything else goes on to the route unchanged: no key or a wrong one, an
id the caller does not own or that is not polled, any other path, method or query, a
database error. The hot read never answers an error, so every error stays the route's.
"""

from __future__ import annotations

from starlette.responses import Response

from service import ownership
from service.api import shortcuts, videos
from service.models import valid_task_id
from service.runtime import Runtime

PREFIX = "/v1/videos/"
NAMED = b"upstream="


async def cached(call: shortcuts.Call) -> Response | None:
    """The route's answer when it is a stored snapshot; None to let the route answer."""
    task_id = call.scope["path"][len(PREFIX) :]
    # With a "/", another route's path (or none's).
    if "/" in task_id or not valid_task_id(task_id):
        return None
    runtime = call.runtime
    named = _named_upstream(runtime, call.scope["query_string"])
    if named == "":
        return None
    try:
        found = await ownership.snapshot_of(runtime.db, call.owner, task_id, named)
    except Exception:  # the route meets it again, and answers it (503, or 500)
        return None
    if found is None:
        return None
    upstream, stored, snapshot_at = found
    # An upstream no longer configured: the route falls back to the default one.
    if stored is None or snapshot_at is None or upstream not in runtime.upstreams:
        return None
    return videos.cached(runtime, upstream, stored, snapshot_at)


SHORTCUT = shortcuts.Shortcut("GET", PREFIX, cached, prefix=True)


def _named_upstream(runtime: Runtime, query: bytes) -> str | None:
    """None for no query, the name of ``?upstream=NAME`` when it is configured, else ""
    (any other query: the route's to check)."""
    if not query:
        return None
    if not query.startswith(NAMED):
        return ""
    name = query[len(NAMED) :].decode("latin-1")
    return name if name in runtime.upstreams else ""
