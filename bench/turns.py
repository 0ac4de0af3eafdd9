"""The delivery worker's database work alone: CPU per webhook of its turns.

    python -m bench.turns                       the service as it is now
    python -m bench.turns --before REF --rounds 3
                                                at git REF and now, alternately, in one run

Seeds pending webhooks (``seed.pending_webhooks``) on SQLite, then turns as the worker
does: each turn records the previous batch as accepted and claims the next (``BATCH``
events, as under load at 50 attempts in flight), with the worker's own ``claim`` and
``record``. No HTTP: the figure is the outbox's share of figure 4. It reports process
CPU time, not wall time, per webhook (microseconds), so that a busy machine skews it
less; compare the two sides of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 25
SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC0wMTIzNDU2Nzg5YWI="


async def measure(count: int) -> float:
    """CPU microseconds per webhook of the turns that deliver ``count`` of them."""
    from bench import seed
    from service import callbacks, outbox
    from service.config import Settings
    from service.db import Database
    from service.delivery import Deliverer
    from service.metrics import Metrics

    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'turns.db'}"
    await seed.pending_webhooks(url, count, "http://127.0.0.1:9/hook")
    settings = Settings(database_url=url, webhook_secret=SECRET, delivery_concurrency=50)
    db = Database(settings)
    worker = Deliverer(settings, db, None, SECRET, Metrics(), callbacks.Guard())  # type: ignore[arg-type]
    done: list[outbox.Result] = []
    started = time.process_time()
    while True:
        now = time.time()
        async with db.write() as conn:
            await worker.record(conn, done, now)
            claimed = await worker.claim(conn, now, BATCH)
        if not claimed and not done:
            break
        done = [outbox.Result(event, now, 1, 200, None, True, False, None) for event in claimed]
    spent = time.process_time() - started
    await db.dispose()
    return spent / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--before", help="also measure the service at this git ref")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.count))))
        return 0
    from bench.run import ROOT, checkout

    sides: dict[str, str | None] = {"now": None}
    if args.before:
        sides = {args.before: str(checkout(args.before, Path(tempfile.mkdtemp()))), **sides}
    found: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, path in sides.items():
            # Run from the checkout, so that its service comes first; bench stays ours.
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            out = subprocess.run(
                [sys.executable, "-m", "bench.turns", "--child", "--count", str(args.count)],
                cwd=path or ROOT, env=env, capture_output=True, check=True,
            )  # fmt: skip
            found[side].append(json.loads(out.stdout))
    for side, values in found.items():
        shown = ", ".join(f"{value:.0f}" for value in values)
        print(f"{side}: {min(values):.0f} us CPU per webhook (runs: {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
