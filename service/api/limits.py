"""Request limits: bodies, enforced while they are read, and NUL characters, which no
database column can hold (PostgreSQL refuses them in text), refused in any path or query."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import envelope

BODY_LIMIT = 64 * 1024


class BodyLimit:
    """Answers 413 once a body passes its limit, counting raw bytes as they arrive."""

    def __init__(self, app: ASGIApp, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    def limit_for(self, scope: Scope) -> int:
        if scope["method"] != "POST":
            return BODY_LIMIT
        path = scope["path"].rstrip("/")
        if path == "/v1/videos" or (path.startswith("/v1/videos/") and path.endswith("/remix")):
            return self.upload_limit
        return BODY_LIMIT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or (
            b"%" in scope["query_string"] and b"%00" in scope["query_string"].lower()
        ):
            message = "the path and query may not contain NUL characters"
            await envelope(422, message)(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await envelope(413, f"the body must be at most {limit} bytes")(scope, receive, send)
            return
        if not chunked:
            # The server holds a body to its Content-Length (none: no body), which is
            # within the limit: nothing to count.
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"the body must be at most {limit} bytes")
            return message

        await self.app(scope, counted, send)
