"""The delivery worker: claims due events, signs and POSTs them, records every attempt."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from service import admission, callbacks, logs, outbox, retry, signing, transport
from service.config import Settings
from service.db import Database
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.upstream import TRANSPORT_ERRORS

log = logging.getLogger(__name__)

CLAIM_BATCH = 100
IDLE_WAIT = 0.5
MAX_RESPONSE = 4096  # we read this much of a receiver's answer, no more
ANSWER_TIME = 1.0  # seconds to read that much, once the status line has come
EXCERPT = 200  # characters of a refusal's body kept in the attempt log
ANSWER_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *TRANSPORT_ERRORS)
USER_AGENT = "status-proxy/webhooks"


def _describe(exc: BaseException) -> str:
    """A short, single-line account of a failed connection, for the attempt log."""
    detail = " ".join(str(exc).split())
    if isinstance(exc, aiohttp.ClientResponseError):
        detail = " ".join(exc.message.split())  # not the request, which carries our headers
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text[:300]


class Deliverer(Pipeline[outbox.Claimed, outbox.Result]):
    """Sends each due event once per attempt; a slow receiver only ever holds one slot."""

    name = "delivery"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        client: httpx.AsyncClient,
        secret: str,
        metrics: Metrics,
        guard: callbacks.Guard,
    ) -> None:
        super().__init__(db, IDLE_WAIT, drain_timeout=settings.delivery_timeout + 2)
        self.settings = settings
        self.client = client
        self.secret = secret
        self.metrics = metrics
        self.guard = guard
        # An attempt cannot outlive its timeout, so the lease only needs a margin for the write.
        self.lease = settings.delivery_timeout + 10
        # Retries may fill at most three quarters of the slots: a backlog of failing
        # receivers never stands between a fresh event and its first attempt.
        self.retry_slots = max(1, settings.delivery_concurrency * 3 // 4)
        self._retrying = 0
        self.admission = admission.Admission(settings, self.lease)
        self._dying: list[outbox.Result] = []

    def room(self) -> int:
        return min(self.settings.delivery_concurrency - len(self._inflight), CLAIM_BATCH)

    async def claim(self, conn: AsyncConnection, now: float, limit: int) -> list[outbox.Claimed]:
        # First attempts have their own lane, ahead of retries and with slots of its own.
        claimed = await outbox.claim(conn, now, limit, self.lease, outbox.FIRST)
        room = min(limit - len(claimed), self.retry_slots - self._retrying)
        if room > 0:
            claimed += await outbox.claim(conn, now, room, self.lease, outbox.RETRY)
        going, self._dying = await self.admission.admit(conn, claimed, now)
        return going

    def committed(self, queued: int) -> None:
        # Events that died waiting on an open circuit are written with the next turn,
        # once this one (which decided it) has committed.
        if self._dying:
            self.metrics.deliveries.labels("dead").inc(len(self._dying))
            self._results.extend(self._dying)
            self._dying = []
            self.kick()

    async def housekeeping(self, now: float) -> None:
        self._dying = []  # decided by a turn that did not commit

    async def release(self, conn: AsyncConnection, jobs: list[outbox.Claimed]) -> None:
        await outbox.release(conn, jobs)

    def started(self, job: outbox.Claimed, now: float) -> None:
        self._retrying += job.lane == outbox.RETRY
        self.admission.started(job)

    async def work(self, job: outbox.Claimed) -> outbox.Result:
        # This job runs in its own asyncio task: these ids mark its lines only.
        logs.task_id.set(job.task_id)
        logs.registration_id.set(job.registration_id)
        logs.event_id.set(job.id)
        try:
            return await self.attempt(job)
        finally:
            self._retrying -= job.lane == outbox.RETRY
            self.admission.finished(job)

    async def record(self, conn: AsyncConnection, outcomes: list[outbox.Result], now: float) -> int:
        await outbox.record(conn, outcomes, now)
        await self.admission.record(conn, outcomes, now)
        return 0

    async def attempt(self, event: outbox.Claimed) -> outbox.Result:
        """One signed POST; never raises. The answer counts from its status line: a 2xx
        within the timeout accepts the event whatever its body then does."""
        started = time.time()
        clock = time.monotonic()
        answer: Answer | None = None
        error: str | None = None
        try:
            callbacks.vet_literal(event.callback_url, self.guard)
            answer = await self._post(event, started, clock)
        except TimeoutError:
            error = f"timed out after {self.settings.delivery_timeout:g}s"
        except callbacks.CallbackRejected as exc:
            error = str(exc)
        except TRANSPORT_ERRORS as exc:
            error = _describe(exc)
        status_code = answer.status_code if answer else None
        duration_ms = answer.duration_ms if answer else int((time.monotonic() - clock) * 1000)
        accepted = status_code is not None and 200 <= status_code < 300
        gone = status_code == 410
        if answer is not None and not accepted:
            error = f"receiver answered {status_code}" + (
                f": {answer.excerpt}" if answer.excerpt else ""
            )
        next_at: float | None = None
        if not accepted and not gone:
            wait = retry.delivery_wait(
                event.attempts + 1,
                self.settings.delivery_retry_schedule,
                answer.retry_after if answer else None,
            )
            next_at = None if wait is None else time.time() + wait
        outcome = "accepted" if accepted else "gone" if gone else "retry" if next_at else "dead"
        self.metrics.deliveries.labels(outcome).inc()
        if accepted:
            self.metrics.delivery_latency.observe(max(0.0, time.time() - event.created_at))
        log.debug("delivery %s", outcome)
        return outbox.Result(
            event, started, duration_ms, status_code, error, accepted, gone, next_at
        )

    async def _post(self, event: outbox.Claimed, started: float, clock: float) -> Answer:
        """Send the event; the timeout covers connecting, sending and the status line.
        Raises TimeoutError and what the transport raises."""
        timestamp = int(started)
        body = event.body.encode()
        # Custom headers may replace our User-Agent (names compare without case); the
        # names they may not use keep them off the ones that follow.
        headers = httpx.Headers({"user-agent": USER_AGENT})
        headers.update(event.headers)
        headers.update(
            {
                "content-type": "application/json",
                "webhook-id": event.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signing.sign(self.secret, event.id, timestamp, body),
            }
        )
        request = self.client.build_request(
            "POST",
            event.callback_url,
            content=body,
            headers=headers,
            timeout=self.settings.delivery_timeout,
            extensions={transport.TARGET: transport.target(event.callback_url)},
        )
        async with asyncio.timeout(self.settings.delivery_timeout):
            response = await self.client.send(request, stream=True)
        duration_ms = int((time.monotonic() - clock) * 1000)
        try:
            text = await _read_answer(response)
        finally:
            await _close(response)
        retry_after = None
        if response.status_code in (429, 503):
            retry_after = retry.parse_retry_after(response.headers.get("retry-after"), time.time())
        excerpt = _excerpt(text, event.headers.values())
        return Answer(response.status_code, duration_ms, retry_after, excerpt)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a receiver answered: its status line came within the timeout."""

    status_code: int
    duration_ms: int  # until the status line
    retry_after: float | None
    excerpt: str  # the start of its body, for the attempt log


async def _read_answer(response: httpx.Response) -> bytes:
    """Up to MAX_RESPONSE bytes of the body within ANSWER_TIME; whatever the body does
    (slow, endless, reset), the answer stands on its status line."""
    chunks: list[bytes] = []
    read = 0
    try:
        async with asyncio.timeout(ANSWER_TIME):
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                read += len(chunk)
                if read >= MAX_RESPONSE:
                    break
    except ANSWER_ERRORS:
        pass
    return b"".join(chunks)[:MAX_RESPONSE]


async def _close(response: httpx.Response) -> None:
    # A body left unread closes the connection rather than draining it.
    try:
        async with asyncio.timeout(ANSWER_TIME):
            await response.aclose()
    except ANSWER_ERRORS:
        pass


def _excerpt(body: bytes, secrets: Iterable[str]) -> str:
    """A single printable line from the start of a body. A receiver may echo what it
    got: the values of custom headers never reach the attempt log."""
    text = body.decode("utf-8", "replace")
    for secret in secrets:
        if secret.strip():
            text = text.replace(secret, "[redacted]").replace(secret.strip(), "[redacted]")
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())[:EXCERPT]
