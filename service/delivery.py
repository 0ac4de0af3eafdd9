"""The delivery worker: claims due events, signs and POSTs them, records every attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from service import callbacks, operator_events, outbox, retry, signing, webhook_secrets
from service.config import Settings
from service.db import Database
from service.metrics import Metrics
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


def _log_outcome(
    outcome: str,
    event: outbox.Claimed,
    status_code: int | None,
    error: str | None,
    next_at: float | None,
) -> None:
    """One line per attempt that changes something, with its ids (set by ``work``)."""
    number = event.attempts + 1
    kind = event.type
    if outcome == "accepted":
        log.info("%s delivered: attempt %d, HTTP %s", kind, number, status_code)
    elif outcome == "retry":
        assert next_at is not None
        when = time.strftime("%H:%M:%S", time.gmtime(next_at))
        log.info("%s attempt %d failed: %s; next attempt at %sZ", kind, number, error, when)
    elif outcome == "gone":
        log.warning("%s refused for good (410): the registration has failed", kind)
    else:
        log.warning("%s dead after %d attempts: %s", kind, number, error)


class Deliverer(Pipeline[outbox.Claimed, outbox.Result]):
    """Sends each due event once per attempt; a slow receiver only ever holds one slot."""

    name = "delivery"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        client: httpx.AsyncClient,
        open_secret: str,
        metrics: Metrics,
    ) -> None:
        super().__init__(db, metrics, IDLE_WAIT, drain_timeout=settings.delivery_timeout + 2)
        self.settings = settings
        self.client = client
        self.open_secret = open_secret  # signs the open API's webhooks (owner "")
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
        await self._attach_secrets(conn, claimed, now)
        return claimed

    async def _attach_secrets(
        self, conn: AsyncConnection, claimed: list[outbox.Claimed], now: float
    ) -> None:
        """Each event carries the secrets valid now, read in this claim transaction: a
        rotation on any replica signs from the next attempt on, a retry included."""
        if claimed:
            owners = sorted({event.owner for event in claimed})
            found = await webhook_secrets.for_owners(conn, owners, self.open_secret, now)
            for event in claimed:
                event.secrets = found[event.owner]

    async def release(self, conn: AsyncConnection, jobs: list[outbox.Claimed]) -> None:
        await outbox.release(conn, jobs)

    def started(self, job: outbox.Claimed, now: float) -> None:
        self._retrying += job.lane == outbox.RETRY

    def ids(self, job: outbox.Claimed) -> dict[str, str]:
        return {"task_id": job.task_id, "registration_id": job.registration_id, "event_id": job.id}

    def hidden(self) -> list[str]:
        # Per-key secrets travel with their events: those of the jobs at hand.
        jobs = [*self._inflight.values(), *(result.event for result in self._results)]
        return [self.open_secret, *{secret for job in jobs for secret in job.secrets}]

    def job_of(self, outcome: outbox.Result) -> outbox.Claimed:
        return outcome.event

    def failed(self, job: outbox.Claimed, reason: str) -> outbox.Result:
        # A failed attempt with no answer, retried on the event's own schedule.
        return outbox.Result(
            job, time.time(), 0, None, reason, False, False, self._next_attempt_at(job, None)
        )

    async def work(self, job: outbox.Claimed) -> outbox.Result:
        try:
            return await self.attempt(job)
        finally:
            self._retrying -= job.lane == outbox.RETRY

    async def record(self, conn: AsyncConnection, outcomes: list[outbox.Result], now: float) -> int:
        written = await outbox.record(conn, outcomes, now)
        dead = operator_events.deliveries_failed(written)
        await operator_events.emit(conn, self.settings, dead, now)
        return 0

    async def attempt(self, event: outbox.Claimed) -> outbox.Result:
        """One signed POST. A timeout, a refused address or a failed connection is the
        attempt's error; anything else raised is made one by the pipeline."""
        started = time.time()
        clock = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            self._vet(event.callback_url)
            async with asyncio.timeout(self.settings.delivery_timeout):
                status_code, retry_after = await self._post(event, started)
        except TimeoutError:
            error = f"timed out after {self.settings.delivery_timeout:g}s"
        except callbacks.CallbackRejected as exc:
            error = str(exc)
        except signing.MalformedSecret as exc:
            log.error("the stored signing secret of this key is malformed (%s): rotate it", exc)
            error = "the signing secret of this key is malformed: rotate it"
        except TRANSPORT_ERRORS as exc:
            error = _describe(exc)
        duration_ms = int((time.monotonic() - clock) * 1000)
        accepted = status_code is not None and 200 <= status_code < 300
        gone = status_code == 410
        if status_code is not None and not accepted and error is None:
            error = f"receiver answered {status_code}"
        next_at = None if accepted or gone else self._next_attempt_at(event, retry_after)
        outcome = "accepted" if accepted else "gone" if gone else "retry" if next_at else "dead"
        self.metrics.deliveries.labels(outcome).inc()
        if accepted:
            self.metrics.delivery_latency.observe(max(0.0, time.time() - event.created_at))
        _log_outcome(outcome, event, status_code, error, next_at)
        return outbox.Result(
            event, started, duration_ms, status_code, error, accepted, gone, next_at
        )

    def _next_attempt_at(self, event: outbox.Claimed, retry_after: float | None) -> float | None:
        """When to try again after this failed attempt; None once the event is dead."""
        schedule = self.settings.delivery_retry_schedule
        wait = retry.delivery_wait(event.attempts + 1, schedule, retry_after)
        return None if wait is None else time.time() + wait

    def _vet(self, url: str) -> None:
        # Host names are vetted by the connector's resolver at connect time; literal
        # addresses never reach a resolver, so they are checked here.
        callbacks.parse(url)
        if self.settings.callback_allow_private:
            return
        host = urlsplit(url).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return
        if not callbacks.is_public(address):
            raise callbacks.CallbackRejected("callback address is not public")

    async def _post(self, event: outbox.Claimed, started: float) -> tuple[int, float | None]:
        timestamp = int(started)
        body = event.body.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.signatures(event.secrets, event.id, timestamp, body),
        }
        async with self.client.stream(
            "POST", event.callback_url, content=body, headers=headers
        ) as response:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= MAX_RESPONSE:
                    break
            retry_after = None
            if response.status_code in (429, 503):
                retry_after = retry.parse_retry_after(
                    response.headers.get("retry-after"), time.time()
                )
            return response.status_code, retry_after


# One signed POST outside the outbox: the test send (POST /v1/webhook_test) and the
# operator's events. It follows what an attempt of the worker does (the same checks,
# timeout, headers and reading of the answer) and should share its code path.


@dataclass(frozen=True, slots=True)
class Sent:
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
) -> Sent:
    """POST ``body`` to ``url`` once, signed with ``secret`` (Standard Webhooks), under the
    callback rules when ``client`` is the guarded delivery client; never raises."""
    clock = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        callbacks.parse(url)
        if not allow_private:
            _vet_literal(url)
        async with asyncio.timeout(timeout):
            status_code, retry_after = await _post_once(
                client, url, event_id, body, secret, headers or {}
            )
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except callbacks.CallbackRejected as exc:
        error = str(exc)
    except TRANSPORT_ERRORS as exc:
        error = _describe(exc)
    if status_code is not None and not 200 <= status_code < 300:
        error = f"receiver answered {status_code}"
    return Sent(status_code, error, int((time.monotonic() - clock) * 1000), retry_after)


def _vet_literal(url: str) -> None:
    """Literal addresses never reach the guarded resolver: check them here."""
    host = urlsplit(url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    if not callbacks.is_public(address):
        raise callbacks.CallbackRejected("callback address is not public")


async def _post_once(
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
