"""Injected faults in a running service: no answer, exception or unwritable outcome stops
polling or delivery, and every other task's webhook goes out as usual."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from service import listener as listener_module
from service import registrations, retention, signing, tasks
from service.listener import Listener
from tests.harness import SECRET, Service, eventually, metric, sql


def runtime_of(service: Service) -> Any:
    return service.thread.server.config.app.state.runtime


def errors(service: Service, worker: str, step: str) -> float:
    return metric(service, "status_proxy_worker_errors_total", worker=worker, step=step)


def ready(service: Service) -> bool:
    return service.client.get("/readyz").status_code == 200


def task_row(service: Service, task_id: str) -> Any:
    [[row]] = sql(
        service.settings.database_url,
        f"SELECT state, errors, snapshot FROM tasks WHERE task_id = '{task_id}'",
    )
    return row


class Lines(logging.Handler):
    """The records one logger emits while in use."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.ERROR)
        self.logger = logging.getLogger(logger)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Lines:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)

    def about(self, **ids: str) -> list[logging.LogRecord]:
        return [r for r in self.records if all(getattr(r, k, None) == v for k, v in ids.items())]


def register_many(service: Service, upstream: Any, url: str, count: int = 5) -> list[str]:
    ids = []
    for _ in range(count):
        task = upstream.add(duration=0.3, queued=0)
        ids.append(service.register(task, url).json()["id"])
    return ids


def all_delivered(service: Service, reg_ids: list[str]) -> bool:
    return all(service.registration(r)["state"] == "delivered" for r in reg_ids)


# --- poison answers -----------------------------------------------------------------------


# Valid JSON that is not plain UTF-8: with a BOM, NULs between ASCII bytes, or both.
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_an_answer_in_another_encoding_is_stored_clean_and_every_webhook_goes_out(
    service, upstream, hooks, encoding
):
    poison = upstream.add(duration=0.3, queued=0, encoding=encoding)
    reg = service.register(poison, f"{hooks.url}/poison").json()
    others = register_many(service, upstream, f"{hooks.url}/other")
    eventually(lambda: all_delivered(service, [*others, reg["id"]]))
    [delivery] = hooks.at("/poison")
    assert delivery.json["data"]["id"] == poison
    assert delivery.json["data"]["status"] == "completed"
    state, _, snapshot = task_row(service, poison)
    assert state == "ended" and json.loads(snapshot)["id"] == poison
    assert "\x00" not in snapshot and not snapshot.startswith("\ufeff")
    answer = service.client.get(f"/v1/videos/{poison}")
    assert answer.status_code == 200 and answer.json()["id"] == poison
    assert ready(service)


def test_a_poll_outcome_that_cannot_be_written_is_an_upstream_error(
    service, upstream, hooks, monkeypatch
):
    # The reading this service once had: the answer's bytes as UTF-8, which UTF-16 is not.
    decide = tasks.decide

    def old_reading(task: Any, fetch: Any, *args: Any) -> Any:
        if fetch.body:
            fetch.body.decode()
        return decide(task, fetch, *args)

    monkeypatch.setattr(tasks, "decide", old_reading)
    poison = upstream.add(duration=0.3, queued=0, encoding="utf-16")
    reg = service.register(poison, f"{hooks.url}/poison").json()
    others = register_many(service, upstream, f"{hooks.url}/other")
    eventually(lambda: all_delivered(service, others))
    # The poison task backs off as after any upstream error, poll after poll.
    eventually(lambda: task_row(service, poison)[1] >= 3)
    state, _, snapshot = task_row(service, poison)
    assert state == "watching" and snapshot is None
    assert errors(service, "poller", "record") >= 3 and ready(service)
    monkeypatch.undo()  # a reading that copes: the task ends and its webhook goes out
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    assert hooks.at("/poison")[0].json["data"]["status"] == "completed"


def test_a_poll_that_raises_is_an_upstream_error_retried_on_its_schedule(service, upstream, hooks):
    runtime = runtime_of(service)
    poison = upstream.add(duration=0.3, queued=0)
    fetch = runtime.upstream.fetch
    raised = []

    async def flaky(task_id: str) -> Any:
        if task_id == poison:
            raised.append(task_id)
            raise KeyError("injected poll fault")
        return await fetch(task_id)

    with Lines("service.pipeline") as lines:
        runtime.upstream.fetch = flaky
        reg = service.register(poison, f"{hooks.url}/poison").json()
        others = register_many(service, upstream, f"{hooks.url}/other")
        eventually(lambda: all_delivered(service, others))
        eventually(lambda: task_row(service, poison)[1] >= 2)
        del runtime.upstream.fetch
        eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    # Each failure counted, and logged once with the task's id, type and message.
    assert errors(service, "poller", "work") == len(raised) >= 2
    logged = lines.about(task_id=poison)
    assert len(logged) == len(raised)
    assert all("KeyError: 'injected poll fault'" in r.getMessage() for r in logged)


# --- deliveries ---------------------------------------------------------------------------


def test_a_delivery_that_raises_is_a_failed_attempt_retried_on_its_schedule(
    make_service, upstream, hooks, monkeypatch
):
    # A lease far longer than the test: retries come on the schedule, not when it runs out.
    service = make_service(delivery_timeout=30.0, delivery_retry_schedule=(0.2,) * 10)

    def broken(secret: str, *args: Any) -> str:
        raise ValueError(f"injected: cannot sign with {secret}")

    monkeypatch.setattr(signing, "sign", broken)
    with Lines("service.pipeline") as lines:
        url = f"{hooks.url}/signed"
        reg = service.register(upstream.add(duration=0.1, queued=0), url).json()
        failed = eventually(lambda: len(a := service.attempts(reg["id"])) >= 2 and a, timeout=15)
    for attempt in failed:
        assert attempt["status_code"] is None
        # The type and message, the secret masked.
        assert attempt["error"] == "ValueError: injected: cannot sign with [hidden]"
    assert errors(service, "delivery", "work") >= 2 and hooks.at("/signed") == []
    text = "\n".join(logging.Formatter().format(r) for r in lines.about(registration_id=reg["id"]))
    assert "cannot sign with [hidden]" in text and SECRET not in text
    monkeypatch.undo()
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    numbers = [a["attempt"] for a in service.attempts(reg["id"])]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(hooks.at("/signed")) == 1


def test_a_delivery_outcome_that_cannot_be_written_is_a_delivery_error(
    make_service, upstream, hooks
):
    service = make_service(delivery_retry_schedule=(0.2, 0.2))
    deliverer = runtime_of(service).deliverer
    attempt = deliverer.attempt
    task = upstream.add(duration=2.0, queued=0)
    poison = service.register(task, f"{hooks.url}/poison").json()["id"]

    async def poisoned(event: Any) -> Any:
        result = await attempt(event)
        if event.registration_id == poison:
            result.status_code = 2**70  # no database column takes it
        return result

    deliverer.attempt = poisoned
    # Six registrations of one task: their events go out and are written together.
    others = [service.register(task, f"{hooks.url}/o{n}").json()["id"] for n in range(5)]
    eventually(lambda: all_delivered(service, others))
    eventually(lambda: service.registration(poison)["state"] == "failed")
    attempts = service.attempts(poison)
    assert len(attempts) == 3  # the first try and two retries, each recorded
    for row in attempts:
        assert row["status_code"] is None
        assert row["error"].startswith("outcome could not be recorded: "), row["error"]
    assert errors(service, "delivery", "record") == 3 and ready(service)


# --- housekeeping -------------------------------------------------------------------------


def test_a_retention_purge_that_raises_stops_nothing(make_service, upstream, hooks, monkeypatch):
    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("injected purge fault")

    monkeypatch.setattr(retention, "purge", broken)
    service = make_service(retention=1.0)  # a purge every half second
    eventually(lambda: errors(service, "poller", "retention_purge") >= 2)
    others = register_many(service, upstream, f"{hooks.url}/other")
    eventually(lambda: all_delivered(service, others))
    assert ready(service)


def test_a_timeout_sweep_that_raises_stops_nothing(make_service, upstream, hooks, monkeypatch):
    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("injected sweep fault")

    monkeypatch.setattr(registrations, "give_up_overdue", broken)
    service = make_service()
    others = register_many(service, upstream, f"{hooks.url}/other")
    eventually(lambda: all_delivered(service, others))
    assert errors(service, "poller", "timeout_sweep") >= 1 and ready(service)


def test_a_probe_that_raises_keeps_probing(make_service, upstream, hooks):
    key = upstream.sim.api_key
    upstream.sim.api_key = "sk-not-ours"  # the key is refused: only probes go out
    service = make_service()
    runtime = runtime_of(service)
    reg = service.register(upstream.add(duration=0.1, queued=0), f"{hooks.url}/probe").json()
    eventually(lambda: runtime.poller.auth_problem is not None)
    raised = []

    async def broken(task_id: str) -> Any:
        raised.append(task_id)
        raise RuntimeError("injected probe fault")

    runtime.upstream.fetch = broken
    eventually(lambda: len(raised) >= 2)  # probing goes on after a probe raised
    assert not ready(service)  # still paused: a probe that raised proves nothing
    del runtime.upstream.fetch
    upstream.sim.api_key = key
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    assert ready(service)


@pytest.mark.postgres
def test_a_listener_that_dies_is_restarted(service, upstream, hooks, monkeypatch):
    runtime = runtime_of(service)
    if runtime.db.is_sqlite:
        pytest.skip("the listener runs on PostgreSQL only")
    monkeypatch.setattr(listener_module, "RECONNECT_WAIT", 0.1)
    runtime.supervisor.first_wait = 0.2
    [listener] = [w for w in runtime.supervisor.workers if isinstance(w, Listener)]
    woken = []
    listener.wake = {"tasks": lambda: woken.append("tasks")}

    async def broken() -> Any:
        raise RuntimeError("injected listener fault")

    listener.connect = broken
    url = service.settings.database_url
    # Its connection drops; reconnecting raises.
    sql(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
    reasons = eventually(
        lambda: (r := service.client.get("/readyz")).status_code == 503 and r.json()["reasons"]
    )
    assert any(r.startswith("listener worker died: RuntimeError") for r in reasons), reasons
    del listener.connect
    eventually(lambda: ready(service))
    woken.clear()

    def notified() -> bool:
        sql(url, "SELECT pg_notify('status_proxy_work', 'tasks')")
        return bool(woken)

    eventually(notified)  # the restarted listener relays notifications again
    assert metric(service, "status_proxy_worker_restarts_total", worker="listener") >= 1
