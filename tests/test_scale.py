"""Several processes on one PostgreSQL database: one API, three workers, one killed."""

import math
import random
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.harness import eventually, sql
from tests.test_process import COMMAND, Proc, env_for, serve

TASKS = 200
KNOBS = {
    # Polls every 2 s: well within what one process sustains, even on a busy machine, so
    # the baseline is not throughput-bound and the comparison counts duplicated work.
    "STATUS_PROXY_UPSTREAM_RATE_LIMIT": "0",
    "STATUS_PROXY_POLL_INTERVAL_MIN": "2",
    "STATUS_PROXY_POLL_INTERVAL_MAX": "2",
    "STATUS_PROXY_UPSTREAM_TIMEOUT": "1",
    "STATUS_PROXY_DELIVERY_TIMEOUT": "2",
    # Every webhook goes to the one receiver: its origin may take as many attempts at
    # once as a worker makes (64), so no webhook waits on the per-origin cap.
    "STATUS_PROXY_DELIVERY_CONCURRENCY_PER_ORIGIN": "64",
}


def add_tasks(upstream, seed):
    """Tasks that finish over about 5 s (2 to 4 polls each), the same profile for every run;
    each task's clock starts at its first poll, so registration speed does not change the
    count."""
    rng = random.Random(seed)
    return [
        upstream.add(duration=rng.uniform(0.5, 5.0), queued=0, starts_when_polled=True)
        for _ in range(TASKS)
    ]


def register_all(api_url, tasks, callback):
    with httpx.Client(base_url=api_url, timeout=30) as client:

        def one(task):
            body = {"task_id": task, "callback_url": callback}
            return client.post("/v1/registrations", json=body).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, tasks)) == {201}


def needed(upstream, task):
    interval = float(KNOBS["STATUS_PROXY_POLL_INTERVAL_MIN"])
    return math.ceil(upstream.sim.tasks[task].duration / interval) + 1


def requests_for(upstream, tasks):
    return sum(upstream.polls(task) for task in tasks)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_replicas_share_the_work_and_a_killed_worker_loses_nothing(db_url, upstream, hooks):
    hooks.receiver.plan("/one", 200, delay=0.2)
    hooks.receiver.plan("/many", 200, delay=0.2)  # deliveries stay in flight a while

    # Baseline: one process does everything.
    single = serve(db_url, upstream.url, **KNOBS).wait_ready()
    try:
        alone = add_tasks(upstream, seed=7)
        register_all(single.url, alone, f"{hooks.url}/one")
        eventually(lambda: len(hooks.at("/one")) >= TASKS, timeout=60)
    finally:
        assert single.stop() == 0
    baseline = requests_for(upstream, alone)

    # One API replica and three workers; one worker is killed halfway.
    api = serve(db_url, upstream.url, "--no-workers", **KNOBS).wait_ready()
    workers = [Proc([COMMAND, "work"], env_for(db_url, upstream.url, **KNOBS)) for _ in range(3)]
    try:
        shared = add_tasks(upstream, seed=7)
        register_all(api.url, shared, f"{hooks.url}/many")
        time.sleep(2.5)  # about half the tasks have ended
        killed_at = time.time()
        workers[0].stop(signal.SIGKILL)
        eventually(lambda: len({d.headers["webhook-id"] for d in hooks.at("/many")}) >= TASKS, 90)
        time.sleep(1)  # let stragglers land before counting
    finally:
        for worker in workers[1:]:
            assert worker.stop() == 0
        assert api.stop() == 0

    arrivals = hooks.at("/many")
    per_event = Counter(d.headers["webhook-id"] for d in arrivals)
    assert len(per_event) == TASKS  # every webhook arrived, each for its own task
    twice = [event for event, count in per_event.items() if count > 1]
    recorded = dict(sql(db_url, "SELECT event_id, count(*) FROM attempts GROUP BY event_id")[0])
    for event in twice:
        first = min(d.received_at for d in arrivals if d.headers["webhook-id"] == event)
        # Sent twice only because the killed worker was sending it: that send came
        # before the kill and was never recorded.
        assert first <= killed_at + 0.5 and per_event[event] == recorded[event] + 1, event
    assert len(twice) <= 64  # at most one delivery batch in flight

    # Polled every 2 s from its first poll to its end, a task needs ceil(d / 2) + 1 polls;
    # a busy machine makes polls late (fewer), only duplicated work makes more. One
    # extra is allowed per task, for a poll that died with the killed worker.
    total = requests_for(upstream, shared)
    expected = sum(needed(upstream, task) for task in alone)
    for run in (alone, shared):
        over = [t for t in run if upstream.polls(t) > needed(upstream, t) + 1]
        assert not over, [(upstream.polls(t), needed(upstream, t)) for t in over[:5]]
    assert baseline <= 1.1 * expected and total <= 1.1 * expected, (baseline, total, expected)
    print(f"scale: {expected} polls needed; one process made {baseline}, "
          f"1 API + 3 workers {total}; {len(twice)} webhooks resent")  # fmt: skip
