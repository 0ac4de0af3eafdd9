"""The upstream budget of this process: a token bucket, slowed down by 429s."""

from __future__ import annotations

import time
from collections.abc import Callable

from service import retry


class RateLimiter:
    """Hands out request tokens at ``rate`` per second (0: unlimited). A 429 pauses every
    request and halves the rate; after the pause one probe goes alone, and once one
    succeeds, successes win the rate back step by step."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.factor = 1.0
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = clock()
        self.paused_until = 0.0
        self.streak = 0
        self.probing = False  # after a 429: one request at a time until one succeeds
        self._probe_out = False

    @property
    def effective_rate(self) -> float:
        return self.rate * self.factor

    def _refill(self, now: float) -> None:
        if self.rate:
            gained = (now - self.updated) * self.effective_rate
            self.tokens = min(self.capacity, self.tokens + gained)
        self.updated = now

    def available(self) -> int:
        """How many requests may start now."""
        now = self.clock()
        if now < self.paused_until:
            return 0
        if self.probing:
            return 0 if self._probe_out else 1
        if not self.rate:
            return 1_000_000
        self._refill(now)
        return int(self.tokens)

    def take(self, count: int = 1) -> None:
        if self.probing:
            self._probe_out = True
        if self.rate:
            self.tokens -= count

    def wait(self) -> float:
        """Seconds until at least one request may start."""
        now = self.clock()
        if now < self.paused_until:
            return self.paused_until - now
        if not self.rate:
            return 0.0
        self._refill(now)
        return max(0.0, (1 - self.tokens) / self.effective_rate)

    def rate_limited(self, retry_after: float | None) -> float:
        """Note a 429; returns how long everything pauses."""
        now = self.clock()
        self.probing, self._probe_out = True, False
        if now < self.paused_until and retry_after is None:
            return self.paused_until - now  # more answers to requests sent before the pause
        self.streak += 1
        self.factor = max(0.05, self.factor / 2)
        if retry_after is not None:
            pause = retry_after
        else:
            pause = min(60.0, 2.0 ** min(self.streak, 6)) * (0.5 + retry.jitter_rng.random() / 2)
        self.paused_until = max(self.paused_until, now + pause)
        self.tokens = min(self.tokens, 0.0)
        return pause

    def succeeded(self) -> None:
        """A request went through: recover the rate gradually."""
        self.streak = 0
        self.probing = self._probe_out = False
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor * 1.05 + 0.01)

    def settled(self) -> None:
        """A request ended without news about the limit (an error): the probe may go again."""
        self._probe_out = False
