"""Logging: JSON lines when stdout is not a terminal, readable lines when it is."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

CONTEXT = ("request_id", "task_id", "registration_id", "event_id")
EXTRA = ("method", "path", "status", "duration_ms")

# The id of the HTTP request being served, for every line logged while serving it.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT + EXTRA:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str) -> None:
    """Set up the root logger once per process."""
    root = logging.getLogger()
    if getattr(root, "_status_proxy", False):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stdout)
    if sys.stdout.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContext())
    root.handlers = [handler]
    root.setLevel(level.upper())
    root._status_proxy = True  # type: ignore[attr-defined]
    # httpx logs every request URL at info; ours carry no secrets, but they are noise.
    for noisy in ("httpx", "httpcore", "aiosqlite", "asyncio", "multipart"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.INFO))
