"""Which claimed events go now: one failing or slow receiver never slows the others.

Each claimed event passes two checks on its origin (scheme, host, port):

- its circuit (shared in the database, ``circuits.py``): while open, events wait
  (postponed without using up a retry) until the next probe time; one event is the
  probe; no event waits past its retry window, it is dead then, as after its last retry;
- this worker's attempts in flight to that origin, at most ``DELIVERY_CONCURRENCY_PER_ORIGIN``:
  beyond that, events wait, and are woken as attempts to the origin finish.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict, deque
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from service import callbacks, circuits, outbox, retry
from service.config import Settings

log = logging.getLogger(__name__)

REMEMBERED = 10_000  # waiting events per origin this worker wakes itself; others wake on time


class Admission:
    """The per-origin gate of one delivery worker."""

    def __init__(self, settings: Settings, lease: float) -> None:
        self.settings = settings
        self.lease = lease
        self.per_origin = settings.delivery_concurrency_per_origin
        # Jitter may stretch each wait by up to JITTER: the window allows for it.
        self.window = sum(settings.delivery_retry_schedule) * (1 + retry.JITTER)
        self.inflight: Counter[str] = Counter()
        self.probes: set[int] = set()  # seqs of events sent as their circuit's probe
        self.unsent: set[int] = set()  # seqs that died waiting, with no request made
        # Per origin, the events waiting for a slot, oldest first (an ordered set): an event
        # leaves when it is claimed again, so a wake-up never goes to one already sent.
        self._busy: defaultdict[str, dict[int, None]] = defaultdict(dict)
        self._tripped: defaultdict[str, deque[int]] = defaultdict(lambda: deque(maxlen=REMEMBERED))

    async def admit(
        self, conn: AsyncConnection, claimed: Sequence[outbox.Claimed], now: float
    ) -> tuple[list[outbox.Claimed], list[outbox.Result]]:
        """Split claimed events into those to send now and those that died waiting;
        the rest are postponed in the same transaction."""
        for event in claimed:
            event.origin = callbacks.origin(event.callback_url)
        tripped = await circuits.open_among(conn, [event.origin for event in claimed])
        probing: set[str] = set()
        going: list[outbox.Claimed] = []
        dead: list[outbox.Result] = []
        later: list[tuple[int, float]] = []
        batch: Counter[str] = Counter()
        for event in claimed:
            name = event.origin
            until: float | None = None
            if (waiting := self._busy.get(name)) is not None:
                waiting.pop(event.seq, None)  # claimed again: no longer waiting
                if not waiting:
                    del self._busy[name]
            if name in tripped:
                until = await self._through_open(conn, event, tripped[name], probing, now)
            elif self.inflight[name] + batch[name] >= self.per_origin:
                until = now + self.settings.delivery_timeout  # woken sooner, as slots free
                waiting = self._busy[name]
                waiting[event.seq] = None
                if len(waiting) > REMEMBERED:
                    del waiting[next(iter(waiting))]
            if until is None:
                going.append(event)
                batch[name] += 1
            elif until <= now:
                dead.append(self._died(event, now))
            else:
                later.append((event.seq, until))
        await outbox.postpone(conn, later)
        await outbox.mark_sent(conn, [event.seq for event in going], now)
        return going, dead

    async def _through_open(
        self,
        conn: AsyncConnection,
        event: outbox.Claimed,
        circuit: circuits.Open,
        probing: set[str],
        now: float,
    ) -> float | None:
        """None when this event is the circuit's probe, else when it may try again
        (not after its retry window ends; at or before ``now``: it is dead)."""
        if (
            circuit.origin not in probing
            and circuit.probe_due(now)
            and await circuits.take_probe(conn, circuit.origin, now, self.lease)
        ):
            probing.add(circuit.origin)
            self.probes.add(event.seq)
            return None
        # After the probe time, a probe is in flight: look again once it must be over.
        until = circuit.probe_at if circuit.probe_at > now else now + self.lease
        self._tripped[circuit.origin].append(event.seq)
        return min(until, (event.first_attempt_at or event.created_at) + self.window)

    def _died(self, event: outbox.Claimed, now: float) -> outbox.Result:
        self.unsent.add(event.seq)
        error = f"not sent: the circuit of {event.origin} stayed open past the retry window"
        return outbox.Result(event, now, 0, None, error, False, False, None)

    def started(self, event: outbox.Claimed) -> None:
        self.inflight[event.origin] += 1

    def finished(self, event: outbox.Claimed) -> None:
        self.inflight[event.origin] -= 1
        if self.inflight[event.origin] <= 0:
            del self.inflight[event.origin]

    async def record(
        self, conn: AsyncConnection, results: Sequence[outbox.Result], now: float
    ) -> None:
        """Count finished attempts on their circuits and wake the events they free."""
        outcomes = []
        freed: Counter[str] = Counter()
        for result in results:
            seq = result.event.seq
            if seq in self.unsent:
                self.unsent.discard(seq)
                continue
            ok = result.accepted or result.gone
            outcomes.append(circuits.Outcome(result.event.origin, ok, seq in self.probes))
            self.probes.discard(seq)
            freed[result.event.origin] += 1
        opened, closed = await circuits.count(
            conn,
            outcomes,
            now,
            self.settings.circuit_cooldown,
            self.settings.circuit_cooldown_max,
        )
        wake: list[int] = []
        for name, slots in freed.items():
            waiting = self._busy.pop(name, {})
            while waiting and slots:
                seq = next(iter(waiting))
                del waiting[seq]
                wake.append(seq)
                slots -= 1
            if waiting:
                self._busy[name] = waiting
        for name, _ in closed:
            wake += self._tripped.pop(name, ())
        await outbox.wake(conn, wake, now)
        for name in opened:
            await circuits.opened_now(conn, self.settings, name, now)
        for name, opened_at in closed:
            await circuits.closed_now(conn, self.settings, name, now, opened_at)
