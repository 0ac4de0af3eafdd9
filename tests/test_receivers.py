"""Receivers, from the client's side: a test send now, and bulk recovery after an outage."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.harness import SECRET, eventually, free_port, sql
from tests.rogue import Rogue

KEYS = ["receiver-key-one", "receiver-key-two"]


def as_key(service, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=service.url, timeout=15, headers={"Authorization": f"Bearer {key}"}
    )


# --- POST /v1/webhook_test -------------------------------------------------------------


def test_webhook_test_sends_one_signed_event_and_says_what_the_receiver_did(service, hooks):
    answer = service.client.post(
        "/v1/webhook_test",
        json={"callback_url": f"{hooks.url}/check?sp=%2Fa", "headers": {"X-Team": "video"}},
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status_code"] == 200 and result["error"] is None
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0
    [delivery] = hooks.at("/check")  # sent before the answer: no waiting
    event = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert event["type"] == "webhook.test" and set(event) == {"id", "type", "timestamp", "data"}
    assert event["id"] == delivery.headers["webhook-id"] == result["event_id"]
    assert delivery.headers["x-team"] == "video"
    assert delivery.headers["content-type"] == "application/json"
    # A test send is no delivery: nothing is registered, recorded or retried.
    assert service.client.get("/v1/registrations").json()["data"] == []


def test_webhook_test_reports_failures_as_the_receiver_gave_them(make_service, hooks):
    service = make_service(delivery_timeout=0.5)
    hooks.receiver.plan("/busy", 503)
    hooks.receiver.plan("/hang", 200, delay=2.0)
    busy = service.client.post("/v1/webhook_test", json={"callback_url": f"{hooks.url}/busy"})
    assert busy.status_code == 200 and busy.json()["status_code"] == 503
    assert busy.json()["error"] == "receiver answered 503"
    hang = service.client.post("/v1/webhook_test", json={"callback_url": f"{hooks.url}/hang"})
    assert hang.json()["status_code"] is None and "timed out" in hang.json()["error"]
    dead = service.client.post(
        "/v1/webhook_test", json={"callback_url": f"http://127.0.0.1:{free_port()}/x"}
    )
    assert dead.status_code == 200 and dead.json()["status_code"] is None
    assert dead.json()["error"]
    # Redirects are not followed, as for webhooks.
    hooks.receiver.plan("/moved", 302, headers={"Location": f"{hooks.url}/elsewhere"})
    moved = service.client.post("/v1/webhook_test", json={"callback_url": f"{hooks.url}/moved"})
    assert moved.json()["status_code"] == 302 and hooks.at("/elsewhere") == []
    # Each was sent once: a test send is never retried.
    time.sleep(1)
    assert len(hooks.at("/busy")) == 1


def test_webhook_test_accepts_a_status_line_whatever_the_body_does(make_service):
    rogue = Rogue().start()
    try:
        service = make_service(delivery_timeout=2.0)
        endless = service.client.post(
            "/v1/webhook_test", json={"callback_url": f"{rogue.url}/endless"}
        )
        assert endless.json()["status_code"] == 200, endless.text
        reset = service.client.post("/v1/webhook_test", json={"callback_url": f"{rogue.url}/reset"})
        assert reset.status_code == 200 and reset.json()["status_code"] is None
    finally:
        rogue.stop()


def test_webhook_test_follows_the_callback_rules(make_service, hooks):
    service = make_service(callback_allow_private=False)
    port = hooks.url.rsplit(":", 1)[1]
    refused = (
        f"{hooks.url}/private",
        f"http://localhost:{port}/private",  # a name that resolves to loopback
        "http://[::ffff:127.0.0.1]/x",
        "ftp://example.com/x",
        "http://user@example.com/x",
    )
    for url in refused:
        answer = service.client.post("/v1/webhook_test", json={"callback_url": url})
        assert answer.status_code == 422, url
        assert answer.json()["error"]["param"] == "callback_url"
    assert hooks.at("/private") == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"callback_url": ""},
        {"callback_url": "https://example.com/x", "extra": 1},
        {"callback_url": "https://example.com/x", "headers": {"bad name": "x"}},
        {"callback_url": "https://example.com/x", "headers": {"X-A": "line\nbreak"}},
        {"callback_url": "https://example.com/x", "headers": {"X-A": 1}},
        {"callback_url": "https://example.com/x", "headers": ["X-A"]},
        {"callback_url": "https://example.com/x", "headers": {f"X-{i}": "v" for i in range(11)}},
    ],
)
def test_webhook_test_refuses_bad_bodies(service, body):
    answer = service.client.post("/v1/webhook_test", json=body)
    assert answer.status_code == 422, answer.text
    assert set(answer.json()["error"]) == {"code", "message", "param"}


def test_webhook_test_needs_a_key_and_never_echoes_header_values(make_service, hooks):
    service = make_service(api_keys=KEYS)
    body = {"callback_url": f"{hooks.url}/k", "headers": {"Authorization": "Bearer rcv-secret"}}
    assert httpx.post(f"{service.url}/v1/webhook_test", json=body).status_code == 401
    with as_key(service, KEYS[1]) as client:
        answer = client.post("/v1/webhook_test", json=body)
    assert answer.status_code == 200 and "rcv-secret" not in answer.text
    [delivery] = hooks.at("/k")
    assert delivery.headers["authorization"] == "Bearer rcv-secret"
    Webhook(SECRET).verify(delivery.body, delivery.headers)
    bad = {"callback_url": f"{hooks.url}/k", "headers": {"X-A": "tok\x01en-123"}}
    with as_key(service, KEYS[1]) as client:
        refused = client.post("/v1/webhook_test", json=bad)
    assert refused.status_code == 422 and "tok" not in refused.text


# --- POST /v1/deliveries/recover ------------------------------------------------------


def _dead_and_gone(service, upstream, hooks, client=None):
    """One registration dead after its retries, one failed by a 410; both failed."""
    client = client or service.client
    hooks.receiver.plan("/down", 500)
    hooks.receiver.plan("/gone", 410)
    regs = {}
    for path in ("/down", "/gone"):
        task = upstream.add(duration=0.1, queued=0)
        answer = client.post(
            "/v1/registrations", json={"task_id": task, "callback_url": f"{hooks.url}{path}"}
        )
        assert answer.status_code == 201, answer.text
        regs[path] = answer.json()["id"]
    for reg in regs.values():
        eventually(lambda r=reg: client.get(f"/v1/registrations/{r}").json()["state"] == "failed")
    return regs


def test_recover_resends_dead_terminal_events_with_fresh_retries(service, upstream, hooks):
    started = time.time()
    regs = _dead_and_gone(service, upstream, hooks)
    assert len(hooks.at("/down")) == 4 and len(hooks.at("/gone")) == 1
    first_id = hooks.at("/down")[0].headers["webhook-id"]

    # Still down: the recovered event gets the whole schedule again, not one last try.
    answer = service.client.post("/v1/deliveries/recover", json={"since": int(started)})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"object": "recovery", "recovered": 1}  # the 410 is left alone
    eventually(lambda: len(hooks.at("/down")) == 8, timeout=20)
    eventually(lambda: [a["attempt"] for a in service.attempts(regs["/down"])][-1] == 4)
    assert service.registration(regs["/down"])["state"] == "failed"

    # Back up: recovered again, accepted, and the registration is delivered.
    hooks.receiver.plan("/down", 200)
    again = service.client.post("/v1/deliveries/recover", json={"since": started})
    assert again.json()["recovered"] == 1
    eventually(lambda: service.registration(regs["/down"])["state"] == "delivered")
    arrivals = hooks.at("/down")
    assert len(arrivals) == 9
    assert {d.headers["webhook-id"] for d in arrivals} == {first_id}
    assert len({d.body for d in arrivals}) == 1
    codes = [a["status_code"] for a in service.attempts(regs["/down"])]
    assert codes == [500] * 8 + [200]
    assert service.registration(regs["/gone"])["state"] == "failed"
    assert len(hooks.at("/gone")) == 1
    # Nothing is left to recover.
    assert service.client.post("/v1/deliveries/recover", json={"since": 0}).json()["recovered"] == 0


def test_recover_takes_only_the_window(service, upstream, hooks):
    regs = _dead_and_gone(service, upstream, hooks)
    [[(died,)]] = sql(
        service.settings.database_url,
        f"SELECT updated_at FROM registrations WHERE id = '{regs['/down']}'",
    )
    hooks.receiver.plan("/down", 200)
    for window in ({"since": died + 1}, {"since": 0, "until": died - 1}):
        answer = service.client.post("/v1/deliveries/recover", json=window)
        assert answer.status_code == 202 and answer.json()["recovered"] == 0, window
    answer = service.client.post(
        "/v1/deliveries/recover", json={"since": died - 1, "until": died + 1}
    )
    assert answer.json()["recovered"] == 1
    eventually(lambda: service.registration(regs["/down"])["state"] == "delivered")
    # Pending again: a second call in the meantime would not have queued it twice.
    assert service.client.post("/v1/deliveries/recover", json={"since": 0}).json()["recovered"] == 0


def test_recover_touches_only_the_callers_registrations(make_service, upstream, hooks):
    service = make_service(api_keys=KEYS)
    with as_key(service, KEYS[0]) as mine, as_key(service, KEYS[1]) as theirs:
        regs = _dead_and_gone(service, upstream, hooks, mine)
        hooks.receiver.plan("/down", 200)
        assert theirs.post("/v1/deliveries/recover", json={"since": 0}).json()["recovered"] == 0
        time.sleep(0.5)
        assert len(hooks.at("/down")) == 4
        assert mine.post("/v1/deliveries/recover", json={"since": 0}).json()["recovered"] == 1
        eventually(
            lambda: mine.get(f"/v1/registrations/{regs['/down']}").json()["state"] == "delivered"
        )
    assert httpx.post(f"{service.url}/v1/deliveries/recover", json={"since": 0}).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"since": -1},
        {"since": "yesterday"},
        {"since": "5"},
        {"since": False},
        {"since": 100, "until": 50},
        {"since": 0, "until": None, "extra": True},
        {"since": 1e400},
    ],
)
def test_recover_refuses_bad_windows(service, body):
    answer = service.client.post(
        "/v1/deliveries/recover",
        content=json.dumps(body).replace("Infinity", "1e400"),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"
