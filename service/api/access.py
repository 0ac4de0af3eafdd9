"""One access line per request, and a request id that every log line of it carries.

Pure ASGI, and lean on the hot path: one pass over the request headers, no objects
built for a line that the log level drops (the access line is at info, and a service
run at warning pays nothing for it)."""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs

log = logging.getLogger("service.access")
ACCEPTED_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
REQUEST_ID = b"x-request-id"


class AccessLog:
    """Takes the caller's ``X-Request-ID`` when it is sane (else makes one), echoes it in
    the answer, and logs method, path (never the query), status and duration once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for name, value in scope["headers"]:
            if name == REQUEST_ID:
                rid = value if ACCEPTED_ID.fullmatch(value) else b""
                break
        if not rid:
            rid = os.urandom(16).hex().encode()  # as random as a uuid4, without the object
        token = logs.request_id.set(rid.decode())
        started = time.perf_counter()
        status = 500

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID, rid)]
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            if log.isEnabledFor(logging.INFO):
                _line(scope, status, started)
            logs.request_id.reset(token)


def _line(scope: Scope, status: int, started: float) -> None:
    duration = round((time.perf_counter() - started) * 1000, 1)
    log.info(
        "%s %s %d %.1fms", scope["method"], scope["path"], status, duration,
        extra={"method": scope["method"], "path": scope["path"], "status": status,
               "duration_ms": duration},
    )  # fmt: skip
