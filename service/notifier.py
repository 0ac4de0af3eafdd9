"""The worker that sends operator events to ``STATUS_PROXY_OPERATOR_WEBHOOK_URL``."""

from __future__ import annotations

import logging
import time

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from service import delivery, operator_events, retry
from service.config import Settings
from service.db import Database
from service.metrics import Metrics
from service.operator_events import Leased, Outcome
from service.pipeline import Pipeline

log = logging.getLogger(__name__)

IDLE_WAIT = 1.0
IN_FLIGHT = 4  # the operator has one endpoint: a few at a time is plenty


class Notifier(Pipeline[Leased, Outcome]):
    """Sends operator events to the operator's URL, retried on the delivery schedule."""

    name = "operator-events"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        client: httpx.AsyncClient,
        secret: str,
        metrics: Metrics,
    ) -> None:
        super().__init__(db, metrics, IDLE_WAIT, drain_timeout=settings.delivery_timeout + 2)
        assert settings.operator_webhook_url is not None
        self.settings = settings
        self.client = client
        self.secret = secret
        self.url = settings.operator_webhook_url.get_secret_value()
        self.lease_seconds = settings.delivery_timeout + 10

    def room(self) -> int:
        return IN_FLIGHT - len(self._inflight)

    async def claim(self, conn: AsyncConnection, now: float, limit: int) -> list[Leased]:
        return await operator_events.lease(conn, now, limit, self.lease_seconds)

    async def release(self, conn: AsyncConnection, jobs: list[Leased]) -> None:
        await operator_events.release(conn, jobs)

    def job_of(self, outcome: Outcome) -> Leased:
        return outcome.event

    def ids(self, job: Leased) -> dict[str, str]:
        return {"event_id": job.id}

    def hidden(self) -> list[str]:
        return [self.secret, self.url]

    def failed(self, job: Leased, reason: str) -> Outcome:
        # Not accepted: retried on the delivery schedule, like an attempt that failed.
        log.warning("operator event %s (%s) not sent: %s", job.id, job.type, reason)
        return Outcome(job, False, self._next_attempt_at(job, None))

    def _next_attempt_at(self, job: Leased, retry_after: float | None) -> float | None:
        wait = retry.delivery_wait(
            job.attempts + 1, self.settings.delivery_retry_schedule, retry_after
        )
        return None if wait is None else time.time() + wait

    async def work(self, job: Leased) -> Outcome:
        answer = await delivery.send(
            self.client,
            self.url,
            job.id,
            job.body.encode(),
            [self.secret],
            self.settings.delivery_timeout,
            guard=None,  # the operator's own URL: no callback guard
        )
        next_at = None
        if not answer.accepted:
            next_at = self._next_attempt_at(job, answer.retry_after)
            # The error says what the operator's endpoint did; never its URL.
            if next_at is None:
                log.error("operator event %s (%s) is dead: %s", job.id, job.type, answer.error)
            else:
                log.warning(
                    "operator event %s (%s) not accepted: %s", job.id, job.type, answer.error
                )
        return Outcome(job, answer.accepted, next_at)

    async def record(self, conn: AsyncConnection, outcomes: list[Outcome], now: float) -> int:
        await operator_events.write_outcomes(conn, outcomes, now)
        return 0
