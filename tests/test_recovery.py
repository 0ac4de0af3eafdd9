"""POST /v1/deliveries/recover: dead terminal events sent again after a receiver's outage."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.harness import eventually, sql

KEYS = ["receiver-key-one", "receiver-key-two"]


def as_key(service, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=service.url, timeout=15, headers={"Authorization": f"Bearer {key}"}
    )


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


def test_recover_resends_dead_terminal_events_with_fresh_retries(make_service, upstream, hooks):
    # The receiver's circuit opens on the way (5 failures in a row): short cool-downs.
    service = make_service(circuit_cooldown=0.2, circuit_cooldown_max=0.2)
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
    ],
)
def test_recover_refuses_bad_windows(service, body):
    answer = service.client.post(
        "/v1/deliveries/recover",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"


def test_recover_refuses_a_window_past_any_time_as_not_json(service):
    """1e400 is no double: JSON with it cannot be read as the client meant (RFC 8259 6)."""
    answer = service.client.post(
        "/v1/deliveries/recover",
        content=b'{"since": 1e400}',
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_json"


def test_recover_while_the_circuit_is_still_open_waits_for_the_probe(make_service, upstream, hooks):
    """Recovered events get a fresh retry window: an origin whose circuit is still open
    makes them wait for its probe, never die again at once."""
    service = make_service(delivery_retry_schedule=(0.1, 0.1, 0.1, 0.1, 0.1), circuit_cooldown=1.0)
    hooks.receiver.plan("/down", 500)
    task = upstream.add(duration=0.1, queued=0)
    reg = service.register(task, f"{hooks.url}/down").json()["id"]
    eventually(lambda: service.registration(reg)["state"] == "failed")
    before = len(service.attempts(reg))
    hooks.receiver.plan("/down", 200)
    answer = service.client.post("/v1/deliveries/recover", json={"since": 0})
    assert answer.json()["recovered"] == 1
    eventually(lambda: service.registration(reg)["state"] == "delivered", timeout=20)
    after = service.attempts(reg)[before:]
    assert [a["status_code"] for a in after] == [200], after
