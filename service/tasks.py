"""What one poll answer means for a task: its next state and schedule (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from service import retry, status
from service.config import Settings
from service.upstream import Fetch

GIVE_UP_MESSAGES = {
    "status_proxy_timeout": "status-proxy gave up: the task did not end within TASK_TIMEOUT",
    "status_proxy_not_found": "status-proxy gave up: the upstream does not know this task",
}


@dataclass(slots=True)
class Claimed:
    """A task leased for one poll, with the fields a decision needs."""

    task_id: str
    lease_until: float
    interval: float
    raw_status: str | None
    progress: int | None
    not_found_since: float | None
    errors: int
    empty_completions: int
    watch_started_at: float
    due_at: float


@dataclass(slots=True)
class Decision:
    """How to update the task row, and what event (if any) the answer causes."""

    values: dict[str, Any]
    event: Literal["video.completed", "video.failed"] | None = None
    give_up: str | None = None  # error code when status-proxy gives the task up itself
    progressed: bool = False
    snapshot: str | None = None


def next_interval(current: float, changed: bool, settings: Settings) -> float:
    """Tighten to the minimum when something moved, else back off towards the maximum."""
    if changed:
        return settings.poll_interval_min
    return min(settings.poll_interval_max, max(settings.poll_interval_min, current * 1.5))


def _jittered(interval: float, settings: Settings) -> float:
    # Jitter only upwards, so no task is polled more often than the minimum.
    return min(settings.poll_interval_max, interval * (1 + 0.1 * retry.jitter_rng.random()))


def decide(task: Claimed, fetch: Fetch, now: float, settings: Settings) -> Decision:
    """The consequence of one upstream answer for one task."""
    common: dict[str, Any] = {"lease_until": None, "polled_at": now}
    if now - task.watch_started_at >= settings.task_timeout:
        return give_up(common, "status_proxy_timeout")
    if fetch.outcome == "ok" and fetch.video is not None:
        return _decide_ok(task, fetch, now, settings, common)
    if fetch.outcome == "not_found":
        since = task.not_found_since if task.not_found_since is not None else now
        if now - since >= settings.not_found_grace:
            return give_up(common, "status_proxy_not_found")
        wait = settings.poll_interval_min
        return Decision({**common, "not_found_since": since, "next_poll_at": now + wait})
    if fetch.outcome in ("rate_limited", "unauthorized"):
        # Not this task's fault: the poller slows or pauses everything instead.
        return Decision({**common, "next_poll_at": now + settings.poll_interval_min})
    errors = task.errors + 1
    wait = retry.poll_backoff(errors, settings.poll_interval_min, settings.poll_interval_max)
    return Decision({**common, "errors": errors, "next_poll_at": now + wait})


def snapshot_text(fetch: Fetch) -> str:
    """The answer as stored and sent: the upstream's own text when it is clean UTF-8 JSON,
    else the parsed object re-encoded (UTF-16 or UTF-32 text, a byte-order mark, NULs).
    What is stored is always text every database takes and every receiver can parse."""
    try:
        text = fetch.body.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and not text.startswith("\ufeff") and "\x00" not in text:
        return text
    # ASCII escapes keep even lone surrogates (valid JSON escapes) storable.
    return json.dumps(fetch.video, separators=(",", ":"), ensure_ascii=True)


def _decide_ok(
    task: Claimed, fetch: Fetch, now: float, settings: Settings, common: dict[str, Any]
) -> Decision:
    assert fetch.video is not None
    reading = status.read(fetch.video)
    snapshot = snapshot_text(fetch)
    changed = (reading.raw_status, reading.progress) != (task.raw_status, task.progress)
    values = {
        **common,
        "raw_status": reading.raw_status,
        "progress": reading.progress,
        "snapshot": snapshot,
        "snapshot_at": now,
        "errors": 0,
        "not_found_since": None,
    }
    kind = reading.kind
    empty = task.empty_completions
    if kind == "completed" and not reading.has_video and empty < settings.empty_video_retries:
        # Some gateways say "completed" a moment before the video link is filled in.
        kind = "in_progress"
        empty += 1
        changed = True
    if kind != "in_progress":
        values.update(state="ended", outcome=kind, ended_at=now)
        event: Literal["video.completed", "video.failed"] = (
            "video.completed" if kind == "completed" else "video.failed"
        )
        return Decision(values, event=event, snapshot=snapshot)
    interval = next_interval(task.interval, changed, settings)
    values.update(
        interval=interval,
        empty_completions=empty,
        next_poll_at=now + _jittered(interval, settings),
    )
    return Decision(values, progressed=changed, snapshot=snapshot)


def give_up(common: dict[str, Any], code: str) -> Decision:
    """Status-proxy ends the task itself with ``video.failed``."""
    values = {**common, "state": "given_up", "outcome": "failed", "ended_at": common["polled_at"]}
    return Decision(values, event="video.failed", give_up=code)


def given_up_data(task_id: str, snapshot: str | None, code: str) -> str:
    """The ``data`` of a ``video.failed`` that status-proxy sends on its own account."""
    video: dict[str, Any] = {"id": task_id, "object": "video"}
    if snapshot:
        try:
            loaded = json.loads(snapshot)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            video = loaded
    video["status"] = "failed"
    video["error"] = {"code": code, "message": GIVE_UP_MESSAGES[code]}
    return json.dumps(video, separators=(",", ":"), ensure_ascii=False)
