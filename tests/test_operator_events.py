"""Operator events: signed, durable, sent to the operator's own URL, and free of secrets."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from service import callbacks, operator_events, retention
from service.config import Settings
from service.db import Database
from service.receiver import Receiver
from tests.harness import SECRET, UPSTREAM_KEY, ServerThread, eventually, sql

TOKEN = "op-token-5b1e77"
KEY = "operator-test-client-key"


@pytest.fixture
def operator():
    receiver = Receiver(secret=SECRET)
    thread = ServerThread(receiver.create_app()).start()
    receiver.url = thread.url  # type: ignore[attr-defined]
    yield receiver
    thread.stop()


def _url(operator) -> str:
    return f"{operator.url}/ops?token={TOKEN}"


def _events(operator, kind: str | None = None) -> list:
    arrived = [d for d in operator.at("/ops") if d.verified]
    return [d for d in arrived if kind is None or d.json["type"] == kind]


def watch(service, task_id: str) -> None:
    """A task to poll, written as a registration would (no callback is needed here)."""
    sql(
        service.settings.database_url,
        "INSERT INTO tasks (upstream, task_id, state, created_at, watch_started_at, "
        f"next_poll_at, interval, errors, empty_completions) VALUES ('default', '{task_id}', 'watching', 0, "
        f"{time.time()}, 0, 0.2, 0, 0)",
    )


class Lines(logging.Handler):
    """Every log line of this process, formatted, while the test runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage() + repr(record.__dict__))


@pytest.fixture
def log_lines():
    """Starts capturing when called: after the service set up logging."""
    handler = Lines()
    root = logging.getLogger()

    def start() -> list[str]:
        root.addHandler(handler)
        return handler.lines

    yield start
    root.removeHandler(handler)


def test_a_dead_delivery_tells_the_operator(make_service, upstream, hooks, operator, log_lines):
    service = make_service(operator_webhook_url=_url(operator), api_keys=[KEY])
    lines = log_lines()
    hooks.receiver.plan("/down", 500)
    hooks.receiver.plan("/gone", 410)
    regs = {}
    for path in ("/down?sig=abc%2Fdef", "/gone"):
        task = upstream.add(duration=0.1, queued=0)
        answer = service.register(task, f"{hooks.url}{path}", metadata={"k": "v"})
        assert answer.status_code == 201, answer.text
        regs[path.split("?")[0]] = (answer.json()["id"], task)
    [dead] = eventually(lambda: _events(operator, "delivery.failed") and [
        d for d in _events(operator, "delivery.failed")
        if d.json["data"]["registration_id"] == regs["/down"][0]
    ], timeout=20)  # fmt: skip
    event = Webhook(SECRET).verify(dead.body, dead.headers)
    assert set(event) == {"id", "type", "timestamp", "data"}
    assert event["id"] == dead.headers["webhook-id"]
    assert event["data"]["task_id"] == regs["/down"][1]
    assert event["data"]["reason"] == "retries_exhausted" and event["data"]["attempts"] == 4
    assert event["data"]["status_code"] == 500 and event["data"]["event_type"] == "video.completed"
    port = hooks.url.rsplit(":", 1)[1]
    assert event["data"]["callback_origin"] == f"http://127.0.0.1:{port}"
    [gone] = eventually(lambda: [
        d for d in _events(operator, "delivery.failed")
        if d.json["data"]["registration_id"] == regs["/gone"][0]
    ])  # fmt: skip
    assert gone.json["data"]["reason"] == "gone" and gone.json["data"]["status_code"] == 410
    # One event per registration that failed, however many attempts it took.
    time.sleep(1)
    assert len(_events(operator, "delivery.failed")) == 2
    # No client key, secret, custom header or receiver token travels to the operator ...
    for delivery in operator.at("/ops"):
        text = delivery.body.decode() + repr(delivery.headers)
        for secret in (KEY, SECRET, UPSTREAM_KEY, "sig=abc", TOKEN):
            assert secret not in text, secret
    # ... and the operator's URL (its token) never reaches a log line.
    assert lines and not [line for line in lines if TOKEN in line]


def test_operator_url_is_exempt_from_the_callback_guard_and_key_changes_are_told(
    make_service, upstream, operator
):
    """The key refused, then accepted again: one event each, to a loopback operator URL
    although private callbacks are refused."""
    service = make_service(
        operator_webhook_url=_url(operator), callback_allow_private=False, upstream_timeout=2.0
    )
    upstream.sim.api_key = "sk-rotated-away"
    watch(service, upstream.add(duration=60, queued=0))
    [refused] = eventually(lambda: _events(operator, "upstream.key_refused"), timeout=20)
    assert refused.json["data"]["upstream"] == "default"
    assert refused.json["data"]["status_code"] == 401
    assert "sk-" not in refused.body.decode()
    upstream.sim.api_key = UPSTREAM_KEY
    [accepted] = eventually(lambda: _events(operator, "upstream.key_accepted"), timeout=30)
    assert accepted.json["data"]["upstream"] == "default"
    assert len(_events(operator, "upstream.key_refused")) == 1  # one per change, not per poll


def test_operator_events_are_retried_and_survive_a_restart(make_service, upstream, operator):
    operator.plan("/ops", 503)
    first = make_service(
        operator_webhook_url=_url(operator), delivery_retry_schedule=(0.2, 30.0, 30.0)
    )
    upstream.sim.api_key = "sk-wrong"
    watch(first, upstream.add(duration=60, queued=0))
    eventually(lambda: len(_events(operator)) >= 2, timeout=20)  # the first try and a retry
    tried = _events(operator)[0].headers["webhook-id"]
    assert {d.headers["webhook-id"] for d in _events(operator)} == {tried}
    first.stop()

    upstream.sim.api_key = UPSTREAM_KEY
    operator.plan("/ops", 200)
    # Not due for 30 s more: make it due now, as if that time had passed while we were down.
    sql(first.settings.database_url, "UPDATE operator_events SET next_attempt_at = 0")
    make_service(operator_webhook_url=_url(operator))
    eventually(lambda: any(
        d.headers["webhook-id"] == tried for d in operator.deliveries[-5:] if d.verified
    ))  # fmt: skip
    query = f"SELECT state, attempts FROM operator_events WHERE id = '{tried}'"
    eventually(lambda: sql(first.settings.database_url, query)[0][0][0] == "delivered")
    [[(_, attempts)]] = sql(first.settings.database_url, query)
    assert attempts >= 3


def test_circuit_changes_go_out_through_the_seam(make_service, operator):
    """What the circuit breaker calls when an origin's circuit opens and closes."""
    service = make_service(operator_webhook_url=_url(operator))

    async def trip() -> None:
        db = Database(service.settings)
        try:
            async with db.write() as conn:
                await operator_events.circuit_opened(
                    conn, service.settings, "https://hooks.example.com", time.time(), 5,
                    time.time() + 30,
                )  # fmt: skip
            async with db.write() as conn:
                await operator_events.circuit_closed(
                    conn, service.settings, "https://hooks.example.com", time.time(),
                    time.time() - 30,
                )  # fmt: skip
        finally:
            await db.dispose()

    asyncio.run(trip())
    opened = eventually(lambda: _events(operator, "origin.circuit_opened"))[0].json
    closed = eventually(lambda: _events(operator, "origin.circuit_closed"))[0].json
    assert opened["data"]["origin"] == "https://hooks.example.com"
    assert opened["data"]["failures"] == 5 and opened["data"]["retry_at"] > time.time()
    assert closed["data"]["origin"] == "https://hooks.example.com"


def test_without_an_operator_url_nothing_is_kept(make_service, upstream, hooks):
    service = make_service(delivery_retry_schedule=(0.1,))
    hooks.receiver.plan("/down", 500)
    reg = service.register(upstream.add(duration=0.1, queued=0), f"{hooks.url}/down").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "failed")
    [[(count,)]] = sql(service.settings.database_url, "SELECT count(*) FROM operator_events")
    assert count == 0


def test_origin_keeps_no_path_query_or_user_info():
    cases = {
        "https://h.example.com/x?sig=1": "https://h.example.com:443",
        "http://127.0.0.1:8080/hook": "http://127.0.0.1:8080",
        "http://[::1]:9/x#f": "http://[::1]:9",
        "HTTP://h.example.com/": "http://h.example.com:80",
        "https://user:pw@H.Example.com./": "https://h.example.com:443",
    }
    for url, expected in cases.items():
        assert callbacks.origin(url) == expected


@pytest.mark.parametrize("value", ["ftp://x.example/", "not a url", "http://"])
def test_a_bad_operator_url_refuses_to_start(value):
    with pytest.raises(ValueError, match="absolute http"):
        Settings(operator_webhook_url=value)
    assert Settings(operator_webhook_url="").operator_webhook_url is None


def test_retention_purges_sent_and_dead_operator_events_only(db_url):
    settings = Settings(database_url=db_url, operator_webhook_url="http://127.0.0.1:9/ops")

    async def run() -> list[tuple[str, str]]:
        db = Database(settings)
        try:
            await db.migrate()
            async with db.write() as conn:
                kinds = [(operator_events.Kind.KEY_REFUSED, {"upstream": "default"})] * 3
                await operator_events.emit(conn, settings, kinds, now=1000.0)
                await conn.execute(
                    operator_events.table.update()
                    .where(operator_events.table.c.seq == 1)
                    .values(state="delivered")
                )
                await conn.execute(
                    operator_events.table.update()
                    .where(operator_events.table.c.seq == 2)
                    .values(state="dead")
                )
            await retention.purge(db, now=1000.0 + 100, retention=50)
            async with db.read() as conn:
                rows = await conn.execute(
                    sa.select(operator_events.table.c.seq, operator_events.table.c.state)
                )
                return [tuple(row) for row in rows]
        finally:
            await db.dispose()

    assert asyncio.run(run()) == [(3, "pending")]  # what is still to send is kept
