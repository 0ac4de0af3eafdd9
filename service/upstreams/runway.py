"""The ``runway`` family: Runway's tasks, ``GET {base}/v1/tasks/{id}`` with
``Authorization: Bearer`` and the required ``X-Runway-Version`` header.

Follows Runway's API reference (docs.dev.runwayml.com: "API Versioning", "HTTP Errors",
the task detail route) and its official SDK (runwayml/sdk-python: ``_client.py`` sends
``X-Runway-Version: 2024-11-06``, ``types/task_retrieve_response.py``,
``lib/polling.py``):

- a task: ``id`` (a UUID), ``createdAt`` (ISO 8601), ``status`` one of ``PENDING``,
  ``THROTTLED`` (waiting for the account's concurrency), ``RUNNING``, ``SUCCEEDED``,
  ``FAILED``, ``CANCELLED``; ``progress`` a fraction from 0 to 1 while running;
  ``output`` a list of URLs once succeeded (they expire within 24 to 48 hours);
  ``failure`` (for people) and ``failureCode`` (dotted, such as ``SAFETY.INPUT.TEXT``)
  once failed;
- Runway asks clients not to expect a task to change faster than every 5 seconds
  (its SDK polls every 6 s, with jitter);
- errors carry ``{"error": "<message>"}``: an unknown, cancelled or deleted task is
  ``404``, an invalid key ``401``, too many requests (or the daily limit) ``429``
  (retried with backoff: the reference names no ``Retry-After``), load shedding ``502``,
  ``503`` and ``504`` (passing); a missing or unknown version header is ``400``.
"""

from __future__ import annotations

from typing import Any

from service import status, upstream
from service.status import Reading
from service.upstreams.dialect import Dialect

VERSION = "2024-11-06"  # the API version this reading follows (runwayml/sdk-python)


def read(task: dict[str, Any]) -> Reading:
    """One Runway task object."""
    return status.reading(
        task.get("status"),
        status.WORDS,
        progress=fraction(task.get("progress")),
        link=status.find_link(task, (("output",),)),
        error=failure(task) or status.error_of(task),
    )


def fraction(value: Any) -> int | None:
    """Runway's progress, a fraction from 0 to 1, as 0 to 100."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return status.percent(round(value * 100, 3))


def failure(task: dict[str, Any]) -> dict[str, str] | None:
    """``{"code", "message"}`` from ``failureCode`` and ``failure``, when there are any."""
    code, message = task.get("failureCode"), task.get("failure")
    if status.absent(code) and status.absent(message):
        return None
    return {"code": status.text(code or ""), "message": status.text(message or "")}


FAMILY = Dialect(
    name="runway",
    route="/v1/tasks/{id}",
    rules=upstream.Rules(),
    reader=read,
    required={"X-Runway-Version": VERSION},
)
