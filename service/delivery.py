"""The delivery worker: claims due events, signs and POSTs them, records every attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from service import callbacks, logs, operator_events, outbox, retry, signing
from service.config import Settings
from service.db import Database
from service.metrics import Metrics
from service.models import TERMINAL_EVENTS
from service.pipeline import Pipeline
from service.upstream import TRANSPORT_ERRORS

log = logging.getLogger(__name__)

CLAIM_BATCH = 100
IDLE_WAIT = 0.5
MAX_RESPONSE = 4096  # we read this much of a receiver's answer, no more
USER_AGENT = "status-proxy/webhooks"


def _describe(exc: BaseException) -> str:
    """A short, single-line account of a failed connection, for the attempt log."""
    detail = " ".join(str(exc).split())
    if isinstance(exc, aiohttp.ClientResponseError):
        detail = " ".join(exc.message.split())  # not the request, which carries our headers
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text[:300]


def deaths(results: list[outbox.Result]) -> list[tuple[operator_events.Kind, dict[str, Any]]]:
    """``delivery.failed`` for each registration these attempts failed: a terminal event
    dead after its last retry, or any event its receiver answered 410 to."""
    found = []
    for r in results:
        dead = r.event.type in TERMINAL_EVENTS and not r.accepted and r.next_attempt_at is None
        if r.gone or dead:
            data = {
                "registration_id": r.event.registration_id,
                "task_id": r.event.task_id,
                "event_id": r.event.id,
                "event_type": r.event.type,
                "reason": "gone" if r.gone else "retries_exhausted",
                "attempts": r.event.attempts + 1,
                "status_code": r.status_code,
                "error": r.error,
                # Not the whole URL: its path or query may carry the receiver's token.
                "callback_origin": operator_events.origin(r.event.callback_url),
            }
            found.append((operator_events.Kind.DELIVERY_FAILED, data))
    return found


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
    ) -> None:
        super().__init__(db, IDLE_WAIT, drain_timeout=settings.delivery_timeout + 2)
        self.settings = settings
        self.client = client
        self.secret = secret
        self.metrics = metrics
        # An attempt cannot outlive its timeout, so the lease only needs a margin for the write.
        self.lease = settings.delivery_timeout + 10
        # Retries may fill at most three quarters of the slots: a backlog of failing
        # receivers never stands between a fresh event and its first attempt.
        self.retry_slots = max(1, settings.delivery_concurrency * 3 // 4)
        self._retrying = 0

    def room(self) -> int:
        return min(self.settings.delivery_concurrency - len(self._inflight), CLAIM_BATCH)

    async def claim(self, conn: AsyncConnection, now: float, limit: int) -> list[outbox.Claimed]:
        # First attempts have their own lane, ahead of retries and with slots of its own.
        claimed = await outbox.claim(conn, now, limit, self.lease, outbox.FIRST)
        room = min(limit - len(claimed), self.retry_slots - self._retrying)
        if room > 0:
            claimed += await outbox.claim(conn, now, room, self.lease, outbox.RETRY)
        return claimed

    async def release(self, conn: AsyncConnection, jobs: list[outbox.Claimed]) -> None:
        await outbox.release(conn, jobs)

    def started(self, job: outbox.Claimed, now: float) -> None:
        self._retrying += job.lane == outbox.RETRY

    async def work(self, job: outbox.Claimed) -> outbox.Result:
        # This job runs in its own asyncio task: these ids mark its lines only.
        logs.task_id.set(job.task_id)
        logs.registration_id.set(job.registration_id)
        logs.event_id.set(job.id)
        try:
            return await self.attempt(job)
        finally:
            self._retrying -= job.lane == outbox.RETRY

    async def record(self, conn: AsyncConnection, outcomes: list[outbox.Result], now: float) -> int:
        await outbox.record(conn, outcomes, now)
        await operator_events.emit(conn, self.settings, deaths(outcomes), now)
        return 0

    async def attempt(self, event: outbox.Claimed) -> outbox.Result:
        """One signed POST; never raises."""
        started = time.time()
        answer = await send(
            self.client,
            event.callback_url,
            event.id,
            event.body.encode(),
            self.secret,
            self.settings.delivery_timeout,
            allow_private=self.settings.callback_allow_private,
        )
        accepted, gone = answer.accepted, answer.status_code == 410
        next_at: float | None = None
        if not accepted and not gone:
            wait = retry.delivery_wait(
                event.attempts + 1, self.settings.delivery_retry_schedule, answer.retry_after
            )
            next_at = None if wait is None else time.time() + wait
        outcome = "accepted" if accepted else "gone" if gone else "retry" if next_at else "dead"
        self.metrics.deliveries.labels(outcome).inc()
        if accepted:
            self.metrics.delivery_latency.observe(max(0.0, time.time() - event.created_at))
        log.debug("delivery %s", outcome)
        return outbox.Result(
            event,
            started,
            answer.duration_ms,
            answer.status_code,
            answer.error,
            accepted,
            gone,
            next_at,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """What a receiver did with one signed POST."""

    status_code: int | None  # None: no answer (refused, reset, timed out)
    error: str | None
    duration_ms: int
    retry_after: float | None = None  # seconds, from a Retry-After on 429/503

    @property
    def accepted(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def send(
    client: httpx.AsyncClient,
    url: str,
    event_id: str,
    body: bytes,
    secret: str,
    timeout: float,
    headers: dict[str, str] | None = None,
    allow_private: bool = False,
) -> Answer:
    """One signed Standard Webhooks POST of ``body`` to ``url``, under the callback rules
    when ``client`` is the guarded delivery client; never raises. Shared by the delivery
    worker, the test send and the operator's events."""
    clock = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        vet(url, allow_private)
        async with asyncio.timeout(timeout):
            status_code, retry_after = await _post(
                client, url, event_id, body, secret, headers or {}
            )
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except callbacks.CallbackRejected as exc:
        error = str(exc)
    except TRANSPORT_ERRORS as exc:
        error = _describe(exc)
    if status_code is not None and not 200 <= status_code < 300 and error is None:
        error = f"receiver answered {status_code}"
    return Answer(status_code, error, int((time.monotonic() - clock) * 1000), retry_after)


def vet(url: str, allow_private: bool) -> None:
    """Refuse a URL of the wrong shape, or a literal non-public address (unless allowed)."""
    # Host names are vetted by the connector's resolver at connect time; literal
    # addresses never reach a resolver, so they are checked here.
    callbacks.parse(url)
    if allow_private:
        return
    host = urlsplit(url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    if not callbacks.is_public(address):
        raise callbacks.CallbackRejected("callback address is not public")


async def _post(
    client: httpx.AsyncClient,
    url: str,
    event_id: str,
    body: bytes,
    secret: str,
    extra: dict[str, str],
) -> tuple[int, float | None]:
    timestamp = int(time.time())
    ours = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.sign(secret, event_id, timestamp, body),
    }
    # A custom header never replaces one of ours.
    headers = {name: value for name, value in extra.items() if name.lower() not in ours} | ours
    async with client.stream("POST", url, content=body, headers=headers) as response:
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_RESPONSE:
                break
        retry_after = None
        if response.status_code in (429, 503):
            retry_after = retry.parse_retry_after(response.headers.get("retry-after"), time.time())
        return response.status_code, retry_after
