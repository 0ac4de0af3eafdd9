"""POST /v1/webhook_test: one signed test event now, and what the receiver did with it."""

from __future__ import annotations

import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.harness import SECRET, refused_port
from tests.rogue import Rogue

KEYS = ["receiver-key-one", "receiver-key-two"]


def as_key(service, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=service.url, timeout=15, headers={"Authorization": f"Bearer {key}"}
    )


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
        "/v1/webhook_test", json={"callback_url": f"http://127.0.0.1:{refused_port()}/x"}
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
        # Names that belong to the request itself or to the signature, as on registrations.
        *(
            {"callback_url": "https://example.com/x", "headers": {name: "x"}}
            for name in (
                "Host",
                "Content-Length",
                "Content-Type",
                "Transfer-Encoding",
                "Connection",
                "Upgrade",
                "Webhook-Signature",
                "webhook-id",
            )
        ),
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
        own = client.get("/v1/webhook_secret").json()["secret"]
    assert answer.status_code == 200 and "rcv-secret" not in answer.text
    [delivery] = hooks.at("/k")
    assert delivery.headers["authorization"] == "Bearer rcv-secret"
    # Signed with the calling key's own secret, as its real webhooks are; never another's.
    Webhook(own).verify(delivery.body, delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(delivery.body, delivery.headers)
    bad = {"callback_url": f"{hooks.url}/k", "headers": {"X-A": "tok\x01en-123"}}
    with as_key(service, KEYS[1]) as client:
        refused = client.post("/v1/webhook_test", json=bad)
    assert refused.status_code == 422 and "tok" not in refused.text


@pytest.mark.parametrize(
    "host",
    ["a" * 70 + ".example", "a..b", "xn--", ".example.com", "\u0660.com"],
)
def test_host_names_that_cannot_be_looked_up_are_refused(service, hooks, host):
    """With private callbacks allowed nothing is resolved at registration: the name's
    encoding is checked there, so neither a test send nor a worker trips on it."""
    for path, body in (
        ("/v1/webhook_test", {"callback_url": f"http://{host}/x"}),
        ("/v1/registrations", {"task_id": "t1", "callback_url": f"http://{host}/x"}),
    ):
        answer = service.client.post(path, json=body)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["error"]["param"] == "callback_url"
