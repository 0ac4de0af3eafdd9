"""What this process's polls last saw of the upstream, for /readyz and the dashboard."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.upstream import Fetch

log = logging.getLogger(__name__)

# Polls in a row that got no answer at all before the upstream counts as unreachable:
# one lost connection is weather, three are an outage (or a wrong address).
UNREACHABLE_AFTER = 3
NO_ANSWER = ("unreachable", "timeout")


@dataclass(slots=True)
class UpstreamHealth:
    """Counts of answered and unanswered polls; times are Unix seconds."""

    last_success_at: float | None = None
    last_failure: str | None = None
    failing_since: float | None = None
    failures: int = 0

    def record(self, fetch: Fetch, now: float) -> None:
        """Note one poll's outcome; log when the upstream is lost or found again."""
        if fetch.outcome in NO_ANSWER:
            if self.failures == 0:
                self.failing_since = now
            self.failures += 1
            self.last_failure = fetch.detail
            if self.failures == UNREACHABLE_AFTER:
                log.warning("%s: %d polls in a row got no answer", fetch.detail, self.failures)
            return
        if fetch.outcome in ("ok", "not_found"):
            if self.failures >= UNREACHABLE_AFTER:
                log.info("the upstream answers again after %d polls without one", self.failures)
            self.last_success_at = now
            self.failures = 0
            self.failing_since = None

    @property
    def unreachable(self) -> bool:
        return self.failures >= UNREACHABLE_AFTER

    def problem(self) -> str | None:
        """Why polls do not work, or None."""
        if not self.unreachable:
            return None
        return f"{self.last_failure} ({self.failures} polls in a row)"

    def as_dict(self) -> dict[str, object]:
        """The /readyz view: ``state`` is ``not_polled_yet``, ``ok``, ``failing`` (polls
        lately unanswered) or ``unreachable``."""
        state = "ok"
        if self.unreachable:
            state = "unreachable"
        elif self.failures:
            state = "failing"
        elif self.last_success_at is None:
            state = "not_polled_yet"
        return {
            "state": state,
            "last_success_at": self.last_success_at,
            "last_failure": self.last_failure,
        }
