"""A simulated task's clock: queued, then in progress, then its outcome; and
``TaskSpec``, the body of ``POST /_sim/tasks`` that chooses how one behaves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from service.simulator import new_api

View = Literal["video", "flat", "wrapped"]
TaskError = Literal[
    "hidden", "not_implemented", "invalid_channel_id", "convert_to_openai_video_failed",
    "get_task_failed",
]  # fmt: skip


@dataclass(slots=True)
class SimTask:
    """One simulated generation: queued, then in progress, then its outcome."""

    id: str
    model: str
    prompt: str
    seconds: str
    size: str
    created: float
    queued: float
    duration: float
    outcome: str  # completed | failed | timed_out, or a provider's own end word
    invisible_for: float = 0.0
    words: dict[str, str] = field(default_factory=dict)  # phase -> status word
    empty_fields: bool = False
    no_video: bool = False
    starts_when_polled: bool = False  # its clock starts at the first poll, not at creation
    content_size: int = 256 * 1024
    family: new_api.Family = "doubao"
    view: View = "video"
    error: TaskError | None = None
    error_for: float | None = None
    refresh: float = 0.0
    encoding: str = "utf-8"  # of its status answers (a codec name); see Stage.encoded

    def failing(self, now: float) -> bool:
        """Whether the task's chosen error is answered now instead of the task."""
        if self.error is None:
            return False
        return self.error_for is None or now - self.created < self.error_for

    def observed(self, now: float) -> tuple[str, float]:
        """What a provider that refreshes its own copy every ``refresh`` seconds shows:
        the phase at its last refresh (``unknown`` before the first) and its time."""
        if self.refresh <= 0:
            return self.phase(now)[0], now
        elapsed = now - self.created
        if elapsed < self.refresh:
            return "unknown", self.created
        seen = self.created + elapsed // self.refresh * self.refresh
        return self.phase(seen)[0], seen

    def phase(self, now: float) -> tuple[str, int]:
        """``queued``, ``in_progress`` or the outcome, and progress 0 to 100."""
        elapsed = now - self.created
        if elapsed < self.queued:
            return "queued", 0
        running = elapsed - self.queued
        if running < self.duration:
            return "in_progress", min(99, int(100 * running / self.duration))
        return self.outcome, 100

    def word(self, phase: str, default: str) -> str:
        """The status word of a phase: the one the test chose, else the provider's."""
        return self.words.get(phase, default)


class TaskSpec(BaseModel):
    """Body of ``POST /_sim/tasks``: a task with chosen behaviour."""

    id: str | None = None
    model: str | None = None
    duration: float = 5.0
    queued: float = 0.5
    # completed | failed | timed_out (new-api's own 24 h give-up: failed, no error object),
    # or a provider's own end: cancelled (Ark, Runway), canceled and aborted (Replicate),
    # expired (Ark)
    outcome: str = "completed"
    invisible_for: float = 0.0  # answered "no such task" this long after creation
    words: dict[str, str] = Field(default_factory=dict)  # phase -> status word
    empty_fields: bool = False  # octopusx's placeholders while running: "", 0, empty error
    no_video: bool = False  # the link field stays empty even once completed
    starts_when_polled: bool = False
    content_size: int = 256 * 1024  # bytes served by /content once completed
    # new-api only: its family (by model name when unset), which view GET answers,
    # and an error answered instead of the task (for error_for seconds, or always).
    family: new_api.Family | None = None
    view: View = "video"
    error: TaskError | None = None
    error_for: float | None = None
    encoding: str = "utf-8"  # of its status answers ("utf-16": valid JSON, not UTF-8)
