"""The delivery worker: claims due events, signs and POSTs them, records every attempt."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp
import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from service import (
    admission,
    callbacks,
    operator_events,
    outbox,
    retry,
    sender,
    signing,
    transport,
    webhook_secrets,
)
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
        guard: callbacks.Guard,
    ) -> None:
        super().__init__(db, metrics, IDLE_WAIT, drain_timeout=settings.delivery_timeout + 2)
        self.settings = settings
        self.client = client
        self.open_secret = open_secret  # signs the open API's webhooks (owner "")
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
        await self._attach_secrets(conn, going, now)
        return going

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
            self.admission.finished(job)

    async def record(self, conn: AsyncConnection, outcomes: list[outbox.Result], now: float) -> int:
        written = await outbox.record(conn, outcomes, now)
        await self.admission.record(conn, written, now)
        dead = operator_events.deliveries_failed(written)
        await operator_events.emit(conn, self.settings, dead, now)
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
        except signing.MalformedSecret as exc:
            log.error("the stored signing secret of this key is malformed (%s): rotate it", exc)
            error = "the signing secret of this key is malformed: rotate it"
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
        next_at = None
        if not accepted and not gone:
            next_at = self._next_attempt_at(event, answer.retry_after if answer else None)
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

    async def _post(self, event: outbox.Claimed, started: float, clock: float) -> Answer:
        """Send the event; the timeout covers connecting, sending and the status line.
        Raises TimeoutError and what the transport raises."""
        body = event.body.encode()
        signature = signing.signatures(event.secrets, event.id, int(started), body)
        return await post(
            self.client, event.callback_url, event.id, int(started), body, signature,
            self.settings.delivery_timeout, event.headers, clock,
        )  # fmt: skip


async def post(
    client: httpx.AsyncClient,
    url: str,
    event_id: str,
    timestamp: int,
    body: bytes,
    signature: str,
    timeout: float,
    extra: dict[str, str],
    clock: float,
) -> Answer:
    """One signed Standard Webhooks POST to ``url`` exactly as given (path and query byte
    for byte), sent below ``client``'s client layer (``sender.Sender``): no redirect
    is followed, a 3xx is the answer. ``timeout`` (seconds) covers connecting, sending
    and the status line; the body is then read within its own small bound, for the log
    only. ``clock`` is the ``time.monotonic()`` the attempt started at. Raises
    TimeoutError and what the sender raises."""
    # Custom headers may replace our User-Agent (names compare without case); the
    # names they may not use keep them off the ones that follow.
    headers = [
        ("user-agent", USER_AGENT),
        *extra.items(),
        ("content-type", "application/json"),
        ("webhook-id", event_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signature),
    ]
    outgoing = sender.Sender.of(client)
    async with asyncio.timeout(timeout):
        reply = await outgoing.send(
            "POST", url, timeout=timeout, headers=headers, content=body, target=_target(url)
        )
    duration_ms = int((time.monotonic() - clock) * 1000)
    text = reply.whole()
    if text is not None:  # the usual small answer, come whole with its status line
        text = text[:MAX_RESPONSE]
        await reply.close()  # its connection kept, nothing to wait for
    else:
        try:
            text = await _read_answer(reply)
        finally:
            await _close(reply)
    retry_after = None
    if reply.status in (429, 503):
        retry_after = retry.parse_retry_after(reply.headers.get("retry-after"), time.time())
    excerpt = _excerpt(text, extra.values())
    return Answer(reply.status, duration_ms, retry_after, excerpt)


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> str:
    # Most events go to callbacks seen before.
    return transport.target(url)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a receiver answered: its status line came within the timeout."""

    status_code: int
    duration_ms: int  # until the status line
    retry_after: float | None
    excerpt: str  # the start of its body, for the attempt log


async def _read_answer(reply: sender.Reply) -> bytes:
    """Up to MAX_RESPONSE bytes of the body within ANSWER_TIME; whatever the body does
    (slow, endless, reset), the answer stands on its status line."""
    chunks: list[bytes] = []
    read = 0
    try:
        async with asyncio.timeout(ANSWER_TIME):
            while read < MAX_RESPONSE and (chunk := await reply.read(MAX_RESPONSE - read)):
                chunks.append(chunk)
                read += len(chunk)
    except ANSWER_ERRORS:
        pass
    return b"".join(chunks)


async def _close(reply: sender.Reply) -> None:
    # A body left unread closes the connection rather than draining it.
    try:
        async with asyncio.timeout(ANSWER_TIME):
            await reply.close()
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


# One signed POST outside the outbox: the test send (POST /v1/webhook_test) and the
# operator's events, through the same post() as every attempt of the worker.


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
    secrets: Sequence[str],
    timeout: float,
    headers: dict[str, str] | None = None,
    guard: callbacks.Guard | None = None,
) -> Sent:
    """POST ``body`` to ``url`` once, signed with ``secrets`` (newest first), under the
    callback rules of ``guard`` (None: none, for the operator's own URL); never raises."""
    clock = time.monotonic()
    answer: Answer | None = None
    error: str | None = None
    try:
        if guard is not None:
            callbacks.vet_literal(url, guard)
        timestamp = int(time.time())
        signature = signing.signatures(secrets, event_id, timestamp, body)
        answer = await post(
            client, url, event_id, timestamp, body, signature, timeout, headers or {}, clock
        )
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except callbacks.CallbackRejected as exc:
        error = str(exc)
    except TRANSPORT_ERRORS as exc:
        error = _describe(exc)
    if answer is None:
        return Sent(None, error, int((time.monotonic() - clock) * 1000))
    if not 200 <= answer.status_code < 300:
        error = f"receiver answered {answer.status_code}" + (
            f": {answer.excerpt}" if answer.excerpt else ""
        )
    return Sent(answer.status_code, error, answer.duration_ms, answer.retry_after)
