"""One access line per request, and a request id that every log line of it carries."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs

log = logging.getLogger("service.access")
ACCEPTED_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


class AccessLog:
    """Takes the caller's ``X-Request-ID`` when it is sane (else makes one), echoes it in
    the answer, and logs method, path (never the query), status and duration once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        rid = given.decode() if ACCEPTED_ID.fullmatch(given) else uuid.uuid4().hex
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            duration = round((time.perf_counter() - started) * 1000, 1)
            log.info(
                "%s %s %d %.1fms", scope["method"], scope["path"], status, duration,
                extra={"method": scope["method"], "path": scope["path"], "status": status,
                       "duration_ms": duration},
            )  # fmt: skip
            logs.request_id.reset(token)
