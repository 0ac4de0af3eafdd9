"""Operations: health, readiness, metrics, and the worker supervisor."""

import asyncio
import itertools
import time

from service.metrics import Metrics
from service.supervisor import Outage, Supervisor
from tests.harness import eventually, metric, sql


def test_healthz_and_readyz(service):
    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_are_prometheus_text(service, upstream, hooks):
    task = upstream.add(duration=0.1, queued=0)
    service.register(task, f"{hooks.url}/m")
    eventually(lambda: hooks.at("/m"))
    text = eventually(
        lambda: (
            'status_proxy_deliveries_total{outcome="accepted"}'
            in (body := service.client.get("/metrics").text)
            and body
        )
    )
    for name in (
        "status_proxy_upstream_requests_total",
        "status_proxy_poll_lag_seconds_bucket",
        "status_proxy_tasks{",
        "status_proxy_delivery_latency_seconds_bucket",
        "status_proxy_outbox_depth",
        "status_proxy_oldest_pending_delivery_age_seconds",
    ):
        assert name in text, name


def readiness(service):
    response = service.client.get("/readyz")
    return response.status_code, " ".join(response.json()["reasons"])


def test_readyz_fails_while_migrations_are_not_at_head(service):
    [[(head,)]] = sql(service.settings.database_url, "SELECT version_num FROM alembic_version")
    sql(service.settings.database_url, "UPDATE alembic_version SET version_num = '9999_newer'")
    assert readiness(service) == (503, "database migrations are not at head")
    sql(service.settings.database_url, f"UPDATE alembic_version SET version_num = '{head}'")
    assert readiness(service) == (200, "")


def test_a_database_outage_is_waited_out_and_loses_nothing(service, upstream, hooks):
    url = service.settings.database_url
    task = upstream.add(duration=0.5, queued=0)
    sql(url, "ALTER TABLE tasks RENAME TO tasks_away")
    # The API answers 503 in the envelope, the workers back off and /readyz says why.
    refused = service.register(task, f"{hooks.url}/later")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "not_ready" and "Retry-After" in refused.headers
    _, reasons = eventually(lambda: (r := readiness(service))[0] == 503 and r, timeout=20)
    assert "poller: database unavailable" in reasons
    sql(url, "ALTER TABLE tasks_away RENAME TO tasks")
    eventually(lambda: readiness(service) == (200, ""), timeout=20)
    assert service.register(task, f"{hooks.url}/later").status_code == 201
    [delivery] = eventually(lambda: hooks.at("/later"))
    assert delivery.json["type"] == "video.completed"
    assert service.client.get("/readyz").status_code == 200


def restarts(service, worker):
    return metric(service, "status_proxy_worker_restarts_total", worker=worker)


def test_a_worker_that_dies_is_restarted_and_readyz_says_so_meanwhile(service, upstream, hooks):
    runtime = service.thread.server.config.app.state.runtime
    runtime.supervisor.first_wait, runtime.supervisor.max_wait = 0.2, 0.5  # waits tests shorten

    async def broken(claiming=True):  # fault injection: a bug in the poller's loop
        raise RuntimeError("injected fault")

    runtime.poller.turn = broken
    _, reasons = eventually(lambda: (r := readiness(service))[0] == 503 and r)
    assert "poller worker died: RuntimeError: injected fault; restarting in" in reasons
    assert service.client.get("/healthz").status_code == 200
    eventually(lambda: restarts(service, "poller") >= 2)  # tried again, and again
    del runtime.poller.turn  # the fault is gone: the next restart sticks
    eventually(lambda: readiness(service) == (200, ""))
    task = upstream.add(duration=0.1, queued=0)
    service.register(task, f"{hooks.url}/healed")
    [delivery] = eventually(lambda: hooks.at("/healed"))
    assert delivery.json["type"] == "video.completed"
    assert restarts(service, "delivery") == 0


class Crashing:
    name = "crashing"
    outage = Outage("crashing")

    async def run(self, stop):
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")

    def kick(self):
        pass


class Steady:
    name = "steady"
    outage = Outage("steady")

    def __init__(self):
        self.stopped = False

    async def run(self, stop):
        await stop.wait()
        self.stopped = True

    def kick(self):
        pass


def test_a_dead_worker_is_reported():
    async def scenario():
        supervisor = Supervisor([Crashing(), Steady()], Metrics(), first_wait=10)
        supervisor.start()
        await asyncio.sleep(0.3)
        return supervisor.problems()

    problems = asyncio.run(scenario())
    assert problems and "crashing worker died" in problems[0] and "boom" in problems[0]


def test_workers_stop_on_the_event_and_drain():
    async def scenario():
        steady = Steady()
        supervisor = Supervisor([steady], Metrics())
        supervisor.start()
        await asyncio.sleep(0.05)
        assert supervisor.problems() == []
        await supervisor.stop()
        return steady.stopped, supervisor.problems()

    assert asyncio.run(scenario()) == (True, [])


class Flaky:
    """Dies on its first runs, then runs until stopped; notes when each run began."""

    name = "flaky"

    def __init__(self, deaths):
        self.deaths = deaths
        self.outage = Outage("flaky")
        self.starts = []
        self.steady = asyncio.Event()

    async def run(self, stop):
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.deaths:
            raise RuntimeError(f"death {len(self.starts)}")
        self.steady.set()
        await stop.wait()

    def kick(self):
        pass


def test_a_dead_worker_is_restarted_with_a_backoff_and_counted():
    async def scenario():
        metrics = Metrics()
        flaky = Flaky(deaths=3)
        supervisor = Supervisor([flaky, Steady()], metrics, first_wait=0.05, max_wait=0.1)
        supervisor.start()
        await asyncio.wait_for(flaky.steady.wait(), 10)
        problems = supervisor.problems()
        await supervisor.stop()
        restarts = metrics.registry.get_sample_value(
            "status_proxy_worker_restarts_total", {"worker": "flaky"}
        )
        return flaky.starts, problems, restarts

    starts, problems, restarts = asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4 and restarts == 3 and problems == []
    # 0.05 s, then doubled, then held at the cap.
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.1


def test_readyz_reasons_name_a_worker_while_it_waits_to_restart():
    async def scenario():
        supervisor = Supervisor([Flaky(deaths=1)], Metrics(), first_wait=20)
        supervisor.start()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if problems := supervisor.problems():
                break
        await supervisor.stop()  # ends the wait at once
        return problems

    assert asyncio.run(scenario()) == [
        "flaky worker died: RuntimeError: death 1; restarting in 20s"
    ]
