"""When to try again: the webhook retry schedule and the poll backoff, as pure functions."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Sequence

RETRY_AFTER_CAP = 3600.0
JITTER = 0.1

# Jitter has its own generator: it neither depends on nor disturbs the global one.
jitter_rng = random.Random()


def delivery_wait(
    failed_attempts: int,
    schedule: Sequence[float],
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds before the next try after ``failed_attempts`` failures; None once it is dead."""
    if failed_attempts > len(schedule):
        return None
    wait = float(schedule[failed_attempts - 1]) * (1 + JITTER * (rng or jitter_rng).random())
    if retry_after is not None:
        wait = max(wait, min(retry_after, RETRY_AFTER_CAP))
    return wait


def poll_backoff(
    errors: int, minimum: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds before polling a task again after ``errors`` failures in a row."""
    base: float = min(maximum * 4, minimum * 2.0 ** min(errors, 16))
    return base * (0.5 + (rng or jitter_rng).random() / 2)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    if seconds != seconds or seconds < 0:  # NaN or the past
        return 0.0 if seconds == seconds else None
    return min(seconds, RETRY_AFTER_CAP)
