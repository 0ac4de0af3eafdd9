"""Logging: JSON lines when stdout is not a terminal, readable lines when it is."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

CONTEXT = ("request_id", "upstream", "task_id", "registration_id", "event_id")
EXTRA = ("method", "path", "status", "duration_ms")

# The ids of what is being worked on (an HTTP request, a poll, a delivery), for every
# line logged while working on it. Each job runs in its own asyncio task, so a value
# set there stays with that job.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
upstream: ContextVar[str | None] = ContextVar("upstream", default=None)
task_id: ContextVar[str | None] = ContextVar("task_id", default=None)
registration_id: ContextVar[str | None] = ContextVar("registration_id", default=None)
event_id: ContextVar[str | None] = ContextVar("event_id", default=None)
_VARS = {
    "request_id": request_id,
    "upstream": upstream,
    "task_id": task_id,
    "registration_id": registration_id,
    "event_id": event_id,
}


def bind(ids: dict[str, str]) -> None:
    """Mark every line of the current asyncio task (one job) with these ids."""
    for key, value in ids.items():
        _VARS[key].set(value)


class Context(logging.Filter):
    """Fill in the ids of the current context that a line does not name itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, var in _VARS.items():
            if getattr(record, key, None) is None:
                setattr(record, key, var.get())
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


class ReadableFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{key}={value}" for key in CONTEXT if (value := getattr(record, key, None))]
        return f"{line} [{' '.join(ids)}]" if ids else line


def configure(level: str) -> None:
    """Set up the root logger once per process."""
    root = logging.getLogger()
    if getattr(root, "_status_proxy", False):
        root.setLevel(level.upper())
        quiet_libraries(root.level)
        return
    handler = logging.StreamHandler(sys.stdout)
    if sys.stdout.isatty():
        handler.setFormatter(ReadableFormatter())
    else:
        handler.setFormatter(JsonFormatter())
    handler.addFilter(Context())
    root.handlers = [handler]
    root.setLevel(level.upper())
    root._status_proxy = True  # type: ignore[attr-defined]
    quiet_libraries(root.level)


# Libraries that log a line per request or statement at info (httpx: every poll and every
# webhook, 20 lines a second at the default rate). status-proxy's own lines say what
# matters; these speak only at warning, or at debug when that is asked for.
CHATTY = ("httpx", "httpcore", "aiosqlite", "asyncio", "multipart", "hpack", "watchfiles")


def quiet_libraries(level: int) -> None:
    library_level = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    for name in CHATTY:
        logging.getLogger(name).setLevel(library_level)
    # httpx names every request URL, and callback and operator URLs may carry a
    # receiver's token in their query: never below warning, whatever the level.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
