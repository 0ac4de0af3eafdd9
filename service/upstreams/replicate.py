"""The ``replicate`` family: Replicate's predictions, ``GET {base}/v1/predictions/{id}``
with ``Authorization: Bearer``.

Follows Replicate's HTTP API reference and topics (replicate.com/docs: "Prediction
lifecycle", "Rate limits") and its official SDK (replicate/replicate-python:
``prediction.py``, ``exceptions.py`` ``ReplicateError``, ``client.py``
``RetryTransport``):

- a prediction: ``id``, ``model``, ``version``, ``input``, ``logs``, ``output``,
  ``data_removed``, ``error`` (a string or null), ``status``, ``created_at``,
  ``started_at``, ``completed_at`` (ISO 8601), ``urls`` and ``metrics``;
- ``status`` is ``starting``, ``processing``, ``succeeded``, ``failed``, ``canceled``
  (by its owner, or a deadline passed while it ran) or ``aborted`` (a deadline passed
  before it started): all but the first two end it;
- ``output`` is whatever the model returns: for video models a URL, a list of URLs or
  an object of named URLs (files expire an hour after the prediction ends);
- there is no progress field: the SDK reads it from the last progress bar line in
  ``logs`` (``" 42%|████  | 21/50"``), and so does this family;
- errors are problem details (RFC 7807) ``{"title","detail","status"}``: an unknown
  prediction is ``404``, a missing or invalid token ``401`` ("Unauthenticated"), the
  rate limit (3000 requests a minute outside creates) ``429`` whose ``detail`` says
  when it resets (``"… resets in ~30s."``), read when there is no ``Retry-After``.
"""

from __future__ import annotations

import re
from typing import Any

from service import status, upstream
from service.status import Reading
from service.upstreams.dialect import Dialect

WORDS = status.WORDS.failing_also("aborted")
_BAR = re.compile(r"^\s*(\d{1,3})%\s*\|")  # a progress bar line: " 42%|████  | 21/50"
_RESETS = re.compile(r"\bin\s*~?\s*(\d+(?:\.\d+)?)\s*s\b")  # "resets in ~30s"


def read(task: dict[str, Any]) -> Reading:
    """One Replicate prediction."""
    return status.reading(
        task.get("status"),
        WORDS,
        progress=logged_progress(task.get("logs")),
        link=status.find_link(task, (("output",),)),
        error=status.error_of(task),
    )


def logged_progress(logs: Any) -> int | None:
    """The percentage of the last progress bar line in a prediction's logs."""
    if not isinstance(logs, str):
        return None
    for line in reversed(logs.splitlines()):
        found = _BAR.match(line)
        if found:
            return status.percent(int(found.group(1)))
    return None


def problem_words(body: Any) -> tuple[str, str]:
    """``code`` and ``message`` of a problem details body: its ``title`` and ``detail``
    (or the OpenAI-style words of a proxy in front)."""
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str):
        return upstream.error_words(body)
    title = body.get("title")
    return (title[:500] if isinstance(title, str) else ""), body["detail"][:500]


def reset_hint(body: Any) -> float | None:
    """Seconds until the rate limit resets, as a 429's ``detail`` says."""
    detail = body.get("detail") if isinstance(body, dict) else None
    found = _RESETS.search(detail) if isinstance(detail, str) else None
    return float(found.group(1)) if found else None


FAMILY = Dialect(
    name="replicate",
    route="/v1/predictions/{id}",
    rules=upstream.Rules(words=problem_words, wait=reset_hint),
    reader=read,
)
