"""What an upstream video object says about its task, whatever the gateway's dialect."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal["in_progress", "completed", "failed"]

COMPLETED = frozenset({"completed", "succeeded", "success"})
FAILED = frozenset({"failed", "failure", "error", "cancelled", "canceled", "expired"})
# "not_start" is what one new-api fork leaks from its provider for a queued task.
IN_PROGRESS = frozenset(
    {"queued", "pending", "submitted", "not_start", "processing", "in_progress", "running"}
)

_unknown_seen: set[str] = set()


@dataclass(frozen=True, slots=True)
class Reading:
    """The normalised view of one upstream answer."""

    kind: Kind
    raw_status: str | None
    progress: int | None
    has_video: bool


def absent(value: Any) -> bool:
    """Whether a field counts as missing: None, "", 0, or an object of nothing but those."""
    if value is None or value == "" or (value == 0 and not isinstance(value, bool)):
        return True
    if isinstance(value, dict):
        return all(absent(item) for item in value.values())
    return False


def read(video: dict[str, Any]) -> Reading:
    """Normalise an upstream video object."""
    status = video.get("status")
    raw = str(status).strip() if not absent(status) else None
    word = raw.lower() if raw else ""
    kind: Kind
    if word in COMPLETED:
        kind = "completed"
    elif word in FAILED or not absent(video.get("error")):
        kind = "failed"
    else:
        kind = "in_progress"
        if word and word not in IN_PROGRESS:
            _log_unknown(raw or word)
    return Reading(
        kind=kind,
        raw_status=raw[:64] if raw else None,
        progress=_progress(video.get("progress")),
        has_video=not absent(video.get("video_url")),
    )


def _progress(value: Any) -> int | None:
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
