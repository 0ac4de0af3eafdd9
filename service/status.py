"""How a task answer reads: status word, progress, video link and error (pure).

``read`` is the OpenAI-style video object, whatever the gateway's dialect, following
what real gateways send (../shared/UPSTREAM.md): octopusx's customised new-api
(``video_url`` at the top level, empty placeholders while running), vanilla new-api
(the link in ``metadata.url``, ``unknown`` before its first refresh, Sora's stored error
body), the flat task view of its release candidates (``SUCCESS``, ``"100%"``,
``fail_reason``) and the ``{"code":"success","data":{…}}`` wrapper of its task routes.

``reading`` and the helpers below it are the parts every provider family
(service/upstreams/) builds its own reading from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class Kind(StrEnum):
    """What an answer says about its task, in status-proxy's words."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


COMPLETED = frozenset({"completed", "succeeded", "success"})
FAILED = frozenset({"failed", "failure", "error", "cancelled", "canceled", "expired"})
# "not_start" and "unknown" are new-api's words for a task its provider has not
# reported on yet (the first before the task starts, the second before its first refresh).
IN_PROGRESS = frozenset(
    {
        "queued", "pending", "submitted", "not_start", "processing", "in_progress",
        "running", "unknown", "starting", "throttled",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Words:
    """Status words, lower case, and what each says about its task. A word in none of
    the sets is in progress (and logged once)."""

    completed: frozenset[str]
    failed: frozenset[str]
    in_progress: frozenset[str]

    def failing_also(self, *words: str) -> Words:
        """These words, with more that fail a task (a provider's own terminal words)."""
        return Words(self.completed, self.failed | set(words), self.in_progress)


WORDS = Words(COMPLETED, FAILED, IN_PROGRESS)

# Where gateways put the video link, in order of preference: octopusx and OpenAI-style
# forks at the top level; new-api's Doubao, Kling, Vidu, Jimeng, Hailuo and Ali in
# metadata.url (meta_data.url in builds of late October 2025); some forks in
# metadata.video_url or a top-level url; new-api's task view in result_url; Volcengine
# Ark in content.video_url; Replicate and Runway in output.
LINK_PATHS: tuple[tuple[str, ...], ...] = (
    ("video_url",),
    ("metadata", "url"),
    ("metadata", "video_url"),
    ("meta_data", "url"),
    ("meta_data", "video_url"),
    ("url",),
    ("result_url",),
    ("content", "video_url"),
    ("output",),
)

_unknown_seen: set[str] = set()


@dataclass(frozen=True, slots=True)
class Reading:
    """The normalised view of one upstream answer.

    ``video_url`` is the link when there is one; ``link_pending`` says a link field is
    there but still empty (the gateway may fill it a moment after "completed"); when
    neither, the answer has no link field at all (Sora through new-api, Gemini: the
    video is read through ``/content``). ``error`` is ``{"code", "message"}`` of a
    failure, when the upstream gave a reason."""

    kind: Kind
    raw_status: str | None
    progress: int | None
    video_url: str | None = None
    link_pending: bool = False
    error: dict[str, str] | None = None

    @property
    def has_video(self) -> bool:
        return self.video_url is not None


def absent(value: Any) -> bool:
    """Whether a field counts as missing: None, "", 0, or an object of nothing but those."""
    if value is None or value == "" or (value == 0 and not isinstance(value, bool)):
        return True
    if isinstance(value, dict):
        return all(absent(item) for item in value.values())
    return False


def unwrap(body: Any) -> Any:
    """The object inside new-api's ``{"code":"success","data":{…}}`` wrapper, or the body."""
    if isinstance(body, dict) and body.get("code") == "success":
        data = body.get("data")
        if isinstance(data, dict):
            return data
    return body


def is_video_of(body: Any, task_id: str) -> bool:
    """Whether a 200 body is a video object of this task: an object with a status, or
    with this task's ``id``/``task_id`` (Sora's stored error body has no status). An
    error envelope, an HTML page, ``[]`` or ``null`` is not, nor an object that names
    only another task (an answer that is not to this request: a gateway always names
    the task it answers for, UPSTREAM.md)."""
    if not isinstance(body, dict):
        return False
    named = [value for value in (body.get("id"), body.get("task_id")) if value]
    if named and task_id not in named:
        return False
    if not absent(body.get("status")):
        return True
    return task_id in named


def is_task_of(body: Any, task_id: str, key: str = "id") -> bool:
    """Whether a 200 body is a provider's task object of this task: an object with a
    status whose ``key`` field, when it has one, is this task's id."""
    if not isinstance(body, dict) or absent(body.get("status")):
        return False
    return key not in body or body[key] == task_id


def read(video: dict[str, Any]) -> Reading:
    """Normalise an upstream video object (unwrapped, and known to be of this task)."""
    return reading(
        video.get("status"),
        WORDS,
        progress=percent(video.get("progress")),
        link=find_link(video),
        error=error_of(video),
    )


def reading(
    status: Any,
    words: Words,
    progress: int | None,
    link: tuple[str | None, bool],
    error: dict[str, str] | None,
) -> Reading:
    """A ``Reading`` from a provider's status word and what was found beside it:
    ``progress`` 0 to 100, ``link`` as ``find_link`` gives it, ``error`` as
    ``{"code", "message"}`` (kept only when the task failed)."""
    # Printable characters only: the word is stored in a column, and PostgreSQL refuses NUL.
    raw = "".join(ch for ch in str(status) if ch.isprintable()).strip() or None
    if absent(status):
        raw = None
    word = raw.lower() if raw else ""
    kind = Kind.IN_PROGRESS
    if word in words.completed:
        kind = Kind.COMPLETED
    elif word in words.failed or (not word and error is not None):
        # An error beside a status that is not a failure word (new-api's Ali family
        # while throttled) does not end the task; with no status at all it does (Sora).
        kind = Kind.FAILED
    elif word and word not in words.in_progress:
        _log_unknown(raw or word)
    url, pending = link
    return Reading(
        kind=kind,
        raw_status=raw[:64] if raw else None,
        progress=progress,
        video_url=url,
        link_pending=pending,
        error=error if kind is Kind.FAILED else None,
    )


def shape(reading: Reading | None) -> dict[str, Any]:
    """The webhook's ``result``: status-proxy's reading of ``data``, the same shape for
    every family (``progress`` 0 to 100, 100 once completed). None: nothing read yet."""
    if reading is None:
        return {"status": Kind.IN_PROGRESS.value, "progress": 0, "video_url": None, "error": None}
    progress = 100 if reading.kind is Kind.COMPLETED else reading.progress or 0
    return {
        "status": reading.kind.value,
        "progress": progress,
        "video_url": reading.video_url,
        "error": _failure(reading),
    }


def _failure(reading: Reading) -> dict[str, str] | None:
    """A failure's ``{"code", "message"}``, never with an empty code: a provider that gave
    none (or ended the task by a word alone: cancelled, expired) gets its status word."""
    if reading.kind is not Kind.FAILED:
        return None
    word = (reading.raw_status or "failed").lower()
    error = dict(reading.error or {})
    error["code"] = error.get("code") or word
    error["message"] = error.get("message") or f"the upstream reported the task {word}"
    return error


def find_link(
    video: dict[str, Any], paths: tuple[tuple[str, ...], ...] = LINK_PATHS
) -> tuple[str | None, bool]:
    """The video link at the first of ``paths`` that holds one, and whether a link field
    is there but still empty."""
    pending = False
    for path in paths:
        found, value = _dig(video, path)
        if not found:
            continue
        link = _link(value)
        if link is not None:
            return link, False
        pending = True
    return None, pending


def _dig(video: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    value: Any = video
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return False, None
        value = value[key]
    return True, value


def _link(value: Any) -> str | None:
    """A link from a string, from the first of a list of them (Runway, Replicate), or
    from the first web address among an object's values (Replicate's named outputs)."""
    if isinstance(value, list):
        value = next((item for item in value if isinstance(item, str) and item.strip()), None)
    elif isinstance(value, dict):
        value = next((item for item in value.values() if _web(item)), None)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _web(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith(("https://", "http://"))


def error_of(video: dict[str, Any]) -> dict[str, str] | None:
    """``{"code", "message"}`` from an ``error`` object or string, or a ``fail_reason``."""
    error = video.get("error")
    if isinstance(error, dict) and not absent(error):
        return {
            "code": text(error.get("code") or error.get("type")),
            "message": text(error.get("message")),
        }
    if isinstance(error, str) and error.strip():
        return {"code": "", "message": error.strip()[:1000]}
    reason = video.get("fail_reason")
    if isinstance(reason, str) and reason.strip():
        return {"code": "", "message": reason.strip()[:1000]}
    return None


def text(value: Any) -> str:
    """A field as error text: "" for None, otherwise its string, at most 1000 characters."""
    return "" if value is None else str(value)[:1000]


def percent(value: Any) -> int | None:
    """Progress 0 to 100 from a number or a ``"50%"`` string; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip().rstrip("%")
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and value == value:  # NaN is not progress
        return max(0, min(100, int(value)))
    return None


def _log_unknown(word: str) -> None:
    if word not in _unknown_seen and len(_unknown_seen) < 1000:
        _unknown_seen.add(word)
        log.warning("unknown upstream status %r, treated as in progress", word[:64])
