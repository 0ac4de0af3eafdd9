"""Operations: health, readiness, metrics, and the worker supervisor."""

import asyncio

from service.supervisor import Supervisor


def test_healthz_and_readyz(service):
    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_are_prometheus_text(service, upstream, hooks):
    task = upstream.add(duration=0.1, queued=0)
    service.register(task, f"{hooks.url}/m")
    from tests.harness import eventually

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


class Crashing:
    name = "crashing"

    async def run(self, stop):
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")

    def kick(self):
        pass


class Steady:
    name = "steady"

    def __init__(self):
        self.stopped = False

    async def run(self, stop):
        await stop.wait()
        self.stopped = True

    def kick(self):
        pass


def test_a_dead_worker_is_reported():
    async def scenario():
        supervisor = Supervisor([Crashing(), Steady()])
        supervisor.start()
        await asyncio.sleep(0.3)
        return supervisor.problems()

    problems = asyncio.run(scenario())
    assert problems and "crashing worker died" in problems[0] and "boom" in problems[0]


def test_workers_stop_on_the_event_and_drain():
    async def scenario():
        steady = Steady()
        supervisor = Supervisor([steady])
        supervisor.start()
        await asyncio.sleep(0.05)
        assert supervisor.problems() == []
        await supervisor.stop()
        return steady.stopped, supervisor.problems()

    assert asyncio.run(scenario()) == (True, [])
