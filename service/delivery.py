"""The delivery worker: claims due events, signs and POSTs them, records every attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from urllib.parse import urlsplit

import aiohttp
import httpx

from service import callbacks, outbox, retry, signing, supervisor
from service.config import Settings
from service.db import UNAVAILABLE, Database
from service.metrics import Metrics
from service.upstream import TRANSPORT_ERRORS

log = logging.getLogger(__name__)

CLAIM_BATCH = 100
IDLE_WAIT = 0.5
FLUSH_DELAY = 0.02
FLUSH_SIZE = 200
MAX_RESPONSE = 4096  # we read this much of a receiver's answer, no more
USER_AGENT = "status-proxy/webhooks"


def _describe(exc: BaseException) -> str:
    """A short, single-line account of a failed connection, for the attempt log."""
    detail = " ".join(str(exc).split())
    if isinstance(exc, aiohttp.ClientResponseError):
        detail = " ".join(exc.message.split())  # not the request, which carries our headers
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text[:300]


class Deliverer:
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
        self.settings = settings
        self.db = db
        self.client = client
        self.secret = secret
        self.metrics = metrics
        # An attempt cannot outlive its timeout, so the lease only needs a margin for the write.
        self.lease = settings.delivery_timeout + 10
        self._kick = asyncio.Event()
        self.outage = supervisor.Outage(self.name)
        self._results: list[outbox.Result] = []
        self._inflight: set[asyncio.Task[None]] = set()

    def kick(self) -> None:
        """Look for due events now."""
        self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self._flush()
                    started = await self._start_due()
                except UNAVAILABLE as exc:
                    await supervisor.pause(stop, self.outage.failed(exc))
                    continue
                self.outage.recovered()
                if started and started == self._room():
                    continue
                await supervisor.nap(self._kick, IDLE_WAIT)
        finally:
            await self._drain()

    def _room(self) -> int:
        return min(self.settings.delivery_concurrency - len(self._inflight), CLAIM_BATCH)

    async def _start_due(self) -> int:
        room = self._room()
        if room <= 0:
            return 0
        now = time.time()
        async with self.db.write() as conn:
            # First attempts have their own lane ahead of retries.
            claimed = await outbox.claim(conn, now, room, self.lease, outbox.FIRST)
            if len(claimed) < room:
                claimed += await outbox.claim(
                    conn, now, room - len(claimed), self.lease, outbox.RETRY
                )
        for event in claimed:
            job = asyncio.create_task(self._deliver(event))
            self._inflight.add(job)
            job.add_done_callback(self._inflight.discard)
        return len(claimed)

    async def _deliver(self, event: outbox.Claimed) -> None:
        result = await self.attempt(event)
        self._results.append(result)
        if len(self._results) >= FLUSH_SIZE or len(self._inflight) <= 1:
            self.kick()
        elif len(self._results) == 1:
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self.kick)

    async def attempt(self, event: outbox.Claimed) -> outbox.Result:
        """One signed POST; never raises."""
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
        except TRANSPORT_ERRORS as exc:
            error = _describe(exc)
        duration_ms = int((time.monotonic() - clock) * 1000)
        accepted = status_code is not None and 200 <= status_code < 300
        gone = status_code == 410
        if status_code is not None and not accepted and error is None:
            error = f"receiver answered {status_code}"
        next_at: float | None = None
        if not accepted and not gone:
            wait = retry.delivery_wait(
                event.attempts + 1, self.settings.delivery_retry_schedule, retry_after
            )
            next_at = None if wait is None else time.time() + wait
        outcome = "accepted" if accepted else "gone" if gone else "retry" if next_at else "dead"
        self.metrics.deliveries.labels(outcome).inc()
        if accepted:
            self.metrics.delivery_latency.observe(max(0.0, time.time() - event.created_at))
        log.debug(
            "delivery %s",
            outcome,
            extra={"event_id": event.id, "registration_id": event.registration_id},
        )
        return outbox.Result(
            event, started, duration_ms, status_code, error, accepted, gone, next_at
        )

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
            "webhook-signature": signing.sign(self.secret, event.id, timestamp, body),
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

    async def _flush(self) -> None:
        if not self._results:
            return
        # Outcomes stay queued until written, so a database blip does not mean a re-send.
        batch = list(self._results)
        async with self.db.write() as conn:
            await outbox.record(conn, batch, time.time())
        del self._results[: len(batch)]

    async def _drain(self) -> None:
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.settings.delivery_timeout + 2)
        for job in self._inflight:
            job.cancel()
        try:
            await asyncio.shield(self._flush())
        except Exception:
            log.exception("could not record the last attempts; their leases will expire")
