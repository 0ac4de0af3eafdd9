"""What one poll answer means for a task: its next state and schedule (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from service import retry, snapshot, status
from service.config import DEFAULT_UPSTREAM, Settings
from service.upstream import Fetch
from service.upstreams import Family, openai_video

GIVE_UP_MESSAGES = {
    "status_proxy_timeout": "status-proxy gave up: the task did not end within TASK_TIMEOUT",
    "status_proxy_not_found": "status-proxy gave up: the upstream does not know this task",
    "status_proxy_upstream_error": "status-proxy gave up: the upstream keeps answering an error",
}
UPSTREAM_ERROR = "status_proxy_upstream_error"


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
    upstream: str = DEFAULT_UPSTREAM

    @property
    def key(self) -> tuple[str, str]:
        """(upstream, task id): what identifies the task."""
        return self.upstream, self.task_id


@dataclass(slots=True)
class Decision:
    """How to update the task row, and what event (if any) the answer causes."""

    values: dict[str, Any]
    event: Literal["video.completed", "video.failed"] | None = None
    give_up: str | None = None  # error code when status-proxy gives the task up itself
    error: dict[str, Any] | None = None  # the webhook's data.error then, when not the stock one
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


def decide(
    task: Claimed,
    fetch: Fetch,
    now: float,
    settings: Settings,
    family: Family = openai_video.FAMILY,
) -> Decision:
    """The consequence of one upstream answer for one task, read in its upstream's
    ``family``; ``settings`` are that upstream's (``Settings.scoped``)."""
    common: dict[str, Any] = {"lease_until": None, "polled_at": now}
    if now - task.watch_started_at >= settings.task_timeout:
        return give_up(common, "status_proxy_timeout")
    if fetch.outcome == "ok" and fetch.video is not None:
        return _decide_ok(task, fetch, now, settings, common, family)
    if fetch.outcome in ("not_found", "forbidden"):
        # A 403 reaching here is one task's (new-api hides tasks of models a key may not
        # use); the poller turns it into "unauthorized" when several tasks answer it.
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
    values = {**common, "errors": errors, "next_poll_at": now + wait}
    if fetch.outcome == "lasting":
        # An error the upstream will keep answering: given the same grace as a missing
        # task (not_found_since holds "unreadable since"), then given up with its words.
        since = task.not_found_since if task.not_found_since is not None else now
        if now - since >= settings.not_found_grace:
            return give_up(common, UPSTREAM_ERROR, lasting_error(fetch))
        values["not_found_since"] = since
    return Decision(values)


def lasting_error(fetch: Fetch) -> dict[str, Any]:
    """``data.error`` of a task given up over an error the upstream would not stop answering."""
    said = ": ".join(part for part in (fetch.code, fetch.message) if part)
    message = f"status-proxy gave up: the upstream keeps answering {fetch.status_code}"
    return {
        "code": UPSTREAM_ERROR,
        "message": f"{message} ({said})" if said else message,
        "upstream_status": fetch.status_code,
        "upstream_code": fetch.code,
        "upstream_message": fetch.message,
    }


def _decide_ok(
    task: Claimed,
    fetch: Fetch,
    now: float,
    settings: Settings,
    common: dict[str, Any],
    family: Family,
) -> Decision:
    assert fetch.video is not None
    reading = family.read(fetch.video)
    text = fetch.text
    changed = (reading.raw_status, reading.progress) != (task.raw_status, task.progress)
    values = {
        **common,
        "raw_status": reading.raw_status,
        "progress": reading.progress,
        "snapshot": text,
        "snapshot_at": now,
        "errors": 0,
        "not_found_since": None,
    }
    kind = reading.kind
    empty = task.empty_completions
    waiting = reading.link_pending and empty < settings.empty_video_retries
    holding = kind is status.Kind.COMPLETED and waiting
    if holding:
        # Some gateways say "completed" a moment before the video link is filled in. An
        # answer with no link field at all (Sora through new-api) has nothing to wait for.
        # Looked at again soon, but told as progress to nobody: it says "completed".
        kind = status.Kind.IN_PROGRESS
        empty += 1
    if kind is not status.Kind.IN_PROGRESS:
        values.update(state="ended", outcome=kind.value, ended_at=now)
        event: Literal["video.completed", "video.failed"] = (
            "video.completed" if kind is status.Kind.COMPLETED else "video.failed"
        )
        return Decision(values, event=event, snapshot=text)
    interval = next_interval(task.interval, changed or holding, settings)
    values.update(
        interval=interval,
        empty_completions=empty,
        next_poll_at=next_poll(task, _jittered(interval, settings), now, settings),
    )
    return Decision(values, progressed=changed and not holding, snapshot=text)


def next_poll(task: Claimed, wait: float, now: float, settings: Settings) -> float:
    """When to poll a task again (seconds since the epoch): ``wait`` after this poll was
    due, not after its answer was written, so that a poller running behind does not add
    its lag to every interval (POLL_INTERVAL_MAX bounds the time between polls). Never
    sooner than POLL_INTERVAL_MIN after ``now``; and from ``now`` when the poll came a
    whole ``wait`` late (after an outage, or in a rotation slower than the intervals),
    so that a backlog is not polled twice in quick succession."""
    base = task.due_at if now - task.due_at < wait else now
    return max(base + wait, now + settings.poll_interval_min)


def give_up(common: dict[str, Any], code: str, error: dict[str, Any] | None = None) -> Decision:
    """Status-proxy ends the task itself with ``video.failed``."""
    values = {**common, "state": "given_up", "outcome": "failed", "ended_at": common["polled_at"]}
    return Decision(values, event="video.failed", give_up=code, error=error)


def given_up_data(
    task_id: str, stored: str | None, code: str, error: dict[str, Any] | None = None
) -> str:
    """The ``data`` of a ``video.failed`` that status-proxy sends on its own account:
    the last snapshot kept (or a bare video object) with ``status`` and ``error`` set."""
    video: dict[str, Any] = snapshot.load(stored) or {"id": task_id, "object": "video"}
    video["status"] = "failed"
    video["error"] = error or {"code": code, "message": GIVE_UP_MESSAGES[code]}
    return snapshot.dumps(video)
