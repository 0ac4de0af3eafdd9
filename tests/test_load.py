"""The poller under load: fair rotation, first polls ahead, and indexed queries only."""

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service import outbox, poller, registrations, webhook_secrets
from service.config import async_url
from service.outbox import FIRST
from tests.harness import eventually

QUERIES = {
    "due tasks": poller.due_tasks(time.time(), 200),
    "due events": outbox.due_events(time.time(), 100, FIRST),
    "overdue tasks": registrations.overdue_tasks(time.time(), 86400, 200),
}
# Statements that find their rows by key, with a batch's worth of keys (SQLite's plan
# changes with the count), and the index each must use: never the state index.
BATCH = [f"reg_{n:026d}" for n in range(20)]
KEYED = {
    "registrations by id": (
        outbox.set_state(BATCH, ("active", "failed"), "delivered", time.time()),
        r"sqlite_autoindex_registrations_1",
    ),
    "one state by id": (
        outbox.set_state(BATCH, ("active",), "failed", time.time()),
        r"sqlite_autoindex_registrations_1",
    ),
    "progress by registration": (
        outbox.drop_progress(BATCH, time.time()),
        r"ix_events_registration",
    ),
    "pending by registration": (outbox.drop_pending(BATCH), r"ix_events_registration"),
    # Each delivery claim reads the signing secrets of its events' keys.
    "signing secrets by key": (
        webhook_secrets.by_owners([f"{n:064x}" for n in range(20)]),
        r"sqlite_autoindex_webhook_secrets_1",
    ),
    # Every registration looks for an active twin: the partial unique index, not a walk.
    "active twin": (registrations._ACTIVE_TWIN.params(key="k"), r"ux_registrations_active"),
}


def plans(database_url):
    """EXPLAIN each hot query on the migrated database, as the planner would run it."""

    async def run():
        engine = create_async_engine(async_url(database_url))
        found = {}
        try:
            async with engine.connect() as conn:
                postgres = conn.dialect.name == "postgresql"
                if postgres:  # tables are tiny here: ask whether an index *can* serve
                    await conn.execute(sa.text("SET enable_seqscan = off"))
                for name, query in {**QUERIES, **{k: q for k, (q, _) in KEYED.items()}}.items():
                    # A statement built once comes with the values it is run with.
                    query, values = query if isinstance(query, tuple) else (query, None)
                    # With bound parameters, as the service runs it: a literal can let
                    # SQLite use a partial index that a parameter does not.
                    expanded = query.compile(conn).construct_expanded_state(values)
                    prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
                    sql, values = prefix + expanded.statement, expanded.positional_parameters
                    rows = (await conn.exec_driver_sql(sql, values)).all()
                    found[name] = "\n".join(str(row[-1]) for row in rows)
        finally:
            await engine.dispose()
        return found

    return asyncio.run(run())


def test_hot_queries_use_indexes_not_scans(service):
    found = plans(service.settings.database_url)
    for name, plan in found.items():
        assert not re.search(
            r"\bSCAN (tasks|events|registrations|webhook_secrets)\b|Seq Scan", plan
        ), (name, plan)
        assert re.search(r"USING (COVERING )?INDEX |Index", plan), (name, plan)
    if service.settings.database_url.startswith("sqlite"):  # PostgreSQL keeps statistics
        for name, (_, index) in KEYED.items():
            assert re.search(index, found[name]), (name, found[name])


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_short_budget_polls_every_task_in_turn(make_service, upstream, hooks, db_url):
    """500 tasks that each want a poll a second, and a budget of 100 polls a second:
    the squeeze of 10,000 tasks at 20/s (measured in bench/), scaled to run in seconds."""
    service = make_service(
        upstream_rate_limit=100, poll_interval_min=1.0, poll_interval_max=1.0, not_found_grace=600
    )
    tasks = [upstream.add(duration=600) for _ in range(500)]
    with ThreadPoolExecutor(8) as pool:
        codes = set(pool.map(lambda t: service.register(t, f"{hooks.url}/f").status_code, tasks))
    assert codes == {201}
    eventually(lambda: all(upstream.polls(task) for task in tasks), timeout=30)
    # Over two rotations (1,000 polls), every task is polled about twice: none starves,
    # none jumps the queue, and the budget holds.
    before = [upstream.polls(task) for task in tasks]
    started, clock = upstream.sim.requests, time.monotonic()
    eventually(lambda: upstream.sim.requests - started >= 1000, timeout=30)
    rate = (upstream.sim.requests - started) / (time.monotonic() - clock)
    deltas = [upstream.polls(task) - was for task, was in zip(tasks, before, strict=True)]
    assert min(deltas) >= 1 and max(deltas) <= 3, (min(deltas), max(deltas))
    assert rate <= 110
    # A new task goes ahead of the backlog.
    fresh = upstream.add(duration=600)
    registered = time.monotonic()
    service.register(fresh, f"{hooks.url}/f")
    eventually(lambda: upstream.polls(fresh), timeout=10)
    assert time.monotonic() - registered < 2.0
    # The lag metric: each poll waited about one rotation at most, never much more.
    text = service.client.get("/metrics").text
    count = float(re.search(r"status_proxy_poll_lag_seconds_count (\S+)", text).group(1))
    within = float(re.search(r'status_proxy_poll_lag_seconds_bucket\{le="30.0"\} (\S+)', text)[1])
    assert count >= 1500 and within == count
