"""Per-key signing secrets, end to end on both databases: each key's webhooks verify with
its own secret only, rotation signs twice during the grace period, retries and
redeliveries sign with what is valid when they are sent, malformed secrets are refused."""

import asyncio
import base64
import hashlib
import subprocess
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service import signing, webhook_secrets
from service.config import Settings
from service.db import Database
from service.main import create_app
from tests.conftest import test_settings
from tests.harness import SECRET, ServerThread, eventually, free_port, sql
from tests.test_process import COMMAND, env_for

KEYS = ("key-alpha", "key-beta")


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def owner(key):
    return hashlib.sha256(key.encode()).hexdigest()


def verifies(secret, delivery):
    try:
        Webhook(secret).verify(delivery.body, delivery.headers)
    except WebhookVerificationError:
        return False
    return True


def signatures(delivery):
    return delivery.headers["webhook-signature"].split(" ")


@pytest.fixture
def keyed(make_service):
    # Retries for 20 s: long enough to rotate a spoilt secret before an event dies.
    return make_service(api_keys=list(KEYS), delivery_retry_schedule=(0.2,) * 100)


def secret_of(service, key):
    response = service.client.get("/v1/webhook_secret", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def rotate(service, key, **body):
    response = service.client.post("/v1/webhook_secret/rotate", headers=auth(key), json=body)
    assert response.status_code == 200, response.text
    return response.json()


def deliver(service, upstream, hooks, key, path):
    """Register a quick task with ``key`` and wait for its webhook at ``path``."""
    task = upstream.add(duration=0.2, queued=0)
    body = {"task_id": task, "callback_url": f"{hooks.url}{path}"}
    response = service.client.post("/v1/registrations", json=body, headers=auth(key))
    assert response.status_code == 201, response.text
    [delivery] = eventually(lambda: hooks.at(path))
    return response.json(), delivery


def test_each_key_has_its_own_secret_and_only_it_verifies(keyed, upstream, hooks):
    alpha, beta = (secret_of(keyed, key) for key in KEYS)
    for found in (alpha, beta):
        assert set(found) == {"object", "secret", "created_at", "previous_expires_at"}
        assert found["object"] == "webhook_secret" and found["previous_expires_at"] is None
        assert signing.check(found["secret"]) and abs(found["created_at"] - time.time()) < 60
    assert alpha["secret"] != beta["secret"] != SECRET
    answer = keyed.client.get("/v1/webhook_secret")
    assert answer.headers["cache-control"] == "no-store"
    assert secret_of(keyed, KEYS[0]) == alpha  # created once, then kept
    _, to_alpha = deliver(keyed, upstream, hooks, KEYS[0], "/a")
    _, to_beta = deliver(keyed, upstream, hooks, KEYS[1], "/b")
    assert verifies(alpha["secret"], to_alpha) and len(signatures(to_alpha)) == 1
    assert verifies(beta["secret"], to_beta) and len(signatures(to_beta)) == 1
    for secret in (beta["secret"], SECRET):
        assert not verifies(secret, to_alpha)
    for secret in (alpha["secret"], SECRET):
        assert not verifies(secret, to_beta)


def test_a_key_first_needed_by_a_webhook_gets_the_secret_it_then_reads(keyed, upstream, hooks):
    """The delivery worker creates the secret; the route then shows that same one."""
    _, delivery = deliver(keyed, upstream, hooks, KEYS[1], "/first")
    assert verifies(secret_of(keyed, KEYS[1])["secret"], delivery)


def test_rotation_signs_with_both_newest_first_then_only_the_new(keyed, upstream, hooks):
    old = secret_of(keyed, KEYS[0])["secret"]
    beta = secret_of(keyed, KEYS[1])["secret"]
    before = time.time()
    answer = keyed.client.post("/v1/webhook_secret/rotate", json={"grace_period": 3600})
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    new = answer.json()
    assert new["secret"] != old and signing.check(new["secret"])
    assert before + 3600 - 5 <= new["previous_expires_at"] <= time.time() + 3600 + 5
    assert secret_of(keyed, KEYS[0]) == new
    _, during = deliver(keyed, upstream, hooks, KEYS[0], "/grace")
    first, second = signatures(during)
    stamp, event_id = int(during.headers["webhook-timestamp"]), during.headers["webhook-id"]
    assert first == signing.sign(new["secret"], event_id, stamp, during.body)
    assert second == signing.sign(old, event_id, stamp, during.body)
    assert verifies(new["secret"], during) and verifies(old, during)
    assert not verifies(beta, during) and not verifies(SECRET, during)
    # The other key is untouched by this key's rotation.
    _, other = deliver(keyed, upstream, hooks, KEYS[1], "/other")
    assert len(signatures(other)) == 1 and verifies(beta, other)
    # Once the grace period is over, only the newest signs.
    newest = rotate(keyed, KEYS[0], grace_period=1)
    eventually(lambda: secret_of(keyed, KEYS[0])["previous_expires_at"] is None, timeout=30)
    _, after = deliver(keyed, upstream, hooks, KEYS[0], "/after")
    assert len(signatures(after)) == 1 and verifies(newest["secret"], after)
    assert not verifies(new["secret"], after) and not verifies(old, after)


def test_rotation_without_grace_stops_the_old_secret_at_once(keyed, upstream, hooks):
    old = secret_of(keyed, KEYS[0])["secret"]
    new = rotate(keyed, KEYS[0], grace_period=0)
    assert new["previous_expires_at"] is None
    _, delivery = deliver(keyed, upstream, hooks, KEYS[0], "/now")
    assert len(signatures(delivery)) == 1
    assert verifies(new["secret"], delivery) and not verifies(old, delivery)


def test_a_rotation_during_grace_keeps_only_the_newest_two(keyed, upstream, hooks):
    first = secret_of(keyed, KEYS[0])["secret"]
    second = rotate(keyed, KEYS[0])["secret"]  # the default grace period: one day
    third = rotate(keyed, KEYS[0])
    assert abs(third["previous_expires_at"] - (time.time() + 86400)) < 60
    _, delivery = deliver(keyed, upstream, hooks, KEYS[0], "/two")
    assert signatures(delivery)[0].startswith("v1,") and len(signatures(delivery)) == 2
    assert verifies(third["secret"], delivery) and verifies(second, delivery)
    assert not verifies(first, delivery)


def test_retries_sign_with_the_secrets_valid_when_they_are_sent(keyed, upstream, hooks):
    service = keyed
    old = secret_of(service, KEYS[0])["secret"]
    hooks.receiver.plan("/retry", 500)
    task = upstream.add(duration=0.2, queued=0)
    service.register(task, f"{hooks.url}/retry")
    eventually(lambda: hooks.at("/retry"))
    new = rotate(service, KEYS[0], grace_period=3600)["secret"]
    eventually(lambda: any(len(signatures(d)) == 2 for d in hooks.at("/retry")), timeout=20)
    hooks.receiver.plan("/retry", 200)
    arrivals = hooks.at("/retry")
    assert len({d.headers["webhook-id"] for d in arrivals}) == 1 and len(arrivals) >= 2
    counts = [len(signatures(d)) for d in arrivals]
    assert counts[0] == 1 and counts == sorted(counts)  # once rotated, always both
    for delivery in arrivals:
        assert verifies(old, delivery)
        assert verifies(new, delivery) == (len(signatures(delivery)) == 2)


def test_a_redelivery_signs_with_the_current_secrets(keyed, upstream, hooks):
    reg, before = deliver(keyed, upstream, hooks, KEYS[0], "/again")
    eventually(lambda: keyed.registration(reg["id"])["state"] == "delivered")
    old = secret_of(keyed, KEYS[0])["secret"]
    new = rotate(keyed, KEYS[0], grace_period=0)["secret"]
    assert keyed.client.post(f"/v1/registrations/{reg['id']}/redeliver").status_code == 202
    again = eventually(lambda: hooks.at("/again")[1:])[0]
    assert again.headers["webhook-id"] == before.headers["webhook-id"]
    assert verifies(old, before) and not verifies(new, before)
    assert verifies(new, again) and not verifies(old, again)


def test_rotate_takes_an_empty_body_and_refuses_bad_grace_periods(keyed):
    client = keyed.client
    first = rotate(keyed, KEYS[1])  # no secret yet: the first one, with nothing before it
    assert first["previous_expires_at"] is None and secret_of(keyed, KEYS[1]) == first
    secret_of(keyed, KEYS[0])
    empty = client.post("/v1/webhook_secret/rotate")
    assert empty.status_code == 200, empty.text
    assert abs(empty.json()["previous_expires_at"] - (time.time() + 86400)) < 60
    assert client.post("/v1/webhook_secret/rotate", json={}).status_code == 200
    assert rotate(keyed, KEYS[0], grace_period=604800)["previous_expires_at"] is not None
    for body in (
        {"grace_period": -1},
        {"grace_period": 604801},
        {"grace_period": "soon"},
        {"grace_period": 1.5},
        {"grace_period": False},
        {"grace_period": "60"},
        {"grace_period": None},
        {"grace": 10},
    ):
        refused = client.post("/v1/webhook_secret/rotate", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["error"]["code"] == "invalid_request"
        assert "whsec_" not in refused.text
    bad_json = client.post(
        "/v1/webhook_secret/rotate", content=b"{", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert client.post("/v1/webhook_secret/rotate", content=b"x").status_code == 415
    for method, path in (("GET", "/v1/webhook_secret"), ("POST", "/v1/webhook_secret/rotate")):
        for headers in ({"Authorization": ""}, auth("key-gamma")):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401 and "whsec_" not in response.text


def test_the_open_api_does_not_hand_out_its_secret(service, upstream, hooks):
    for method, path in (("GET", "/v1/webhook_secret"), ("POST", "/v1/webhook_secret/rotate")):
        response = service.client.request(method, path)
        assert response.status_code == 409
        assert "STATUS_PROXY_WEBHOOK_SECRET" in response.json()["error"]["message"]
        assert "whsec_" not in response.text.replace("STATUS_PROXY_WEBHOOK_SECRET", "")
    service.register(upstream.add(duration=0.2, queued=0), f"{hooks.url}/open")
    [delivery] = eventually(lambda: hooks.at("/open"))
    assert verifies(SECRET, delivery) and len(signatures(delivery)) == 1


def test_a_malformed_stored_secret_signs_nothing_until_rotated(keyed, upstream, hooks):
    secret_of(keyed, KEYS[0])
    url = keyed.settings.database_url
    sql(url, f"UPDATE webhook_secrets SET secret = 'whsec_!!!!' WHERE owner = '{owner(KEYS[0])}'")
    refused = keyed.client.get("/v1/webhook_secret")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "malformed_secret"
    assert "!!!!" not in refused.text and "rotate" in refused.json()["error"]["message"]
    task = upstream.add(duration=0.2, queued=0)
    reg = keyed.register(task, f"{hooks.url}/spoilt").json()
    [attempt, *_] = eventually(lambda: keyed.attempts(reg["id"]))
    assert attempt["status_code"] is None and "secret" in attempt["error"]
    assert "!!!!" not in attempt["error"] and hooks.at("/spoilt") == []
    # Rotating drops the spoilt secret (it never signs again) and the retry goes through.
    rotated = rotate(keyed, KEYS[0], grace_period=3600)
    assert rotated["previous_expires_at"] is None
    [delivery] = eventually(lambda: hooks.at("/spoilt"))
    assert len(signatures(delivery)) == 1 and verifies(rotated["secret"], delivery)
    # The other key's webhooks never noticed.
    _, other = deliver(keyed, upstream, hooks, KEYS[1], "/fine")
    assert verifies(secret_of(keyed, KEYS[1])["secret"], other)


def test_a_malformed_previous_secret_is_refused_when_read(keyed):
    secret_of(keyed, KEYS[0])
    rotate(keyed, KEYS[0], grace_period=3600)
    sql(
        keyed.settings.database_url,
        f"UPDATE webhook_secrets SET previous_secret = 'whsec_short' "
        f"WHERE owner = '{owner(KEYS[0])}'",
    )
    assert keyed.client.get("/v1/webhook_secret").status_code == 409
    assert secret_of(keyed, KEYS[1])["previous_expires_at"] is None


def test_replicas_racing_to_create_a_secret_agree(db_url):
    """Several processes' first need of one key's secret at once: one secret wins."""

    async def race():
        settings = Settings(database_url=db_url, webhook_secret=SECRET)
        dbs = [Database(settings) for _ in range(3)]
        try:
            await dbs[0].migrate()
            now = time.time()
            found = await asyncio.gather(
                *(webhook_secrets.current(db, owner("k"), now) for db in dbs * 3)
            )
            async with dbs[1].write() as conn:
                claimed = await webhook_secrets.for_owners(conn, [owner("k"), ""], SECRET, now)
        finally:
            for db in dbs:
                await db.dispose()
        return {item.secret for item in found}, claimed

    secrets, claimed = asyncio.run(race())
    [secret] = secrets
    assert claimed == {owner("k"): (secret,), "": (SECRET,)}
    [[(count,)]] = sql(db_url, "SELECT count(*) FROM webhook_secrets")
    assert count == 1


@pytest.mark.parametrize(
    ("stored", "now", "expected"),
    [
        (webhook_secrets.KeySecrets("new", 10.0), 11.0, ("new",)),
        (webhook_secrets.KeySecrets("new", 10.0, "old", 20.0), 19.9, ("new", "old")),
        (webhook_secrets.KeySecrets("new", 10.0, "old", 20.0), 20.0, ("new",)),
        (webhook_secrets.KeySecrets("new", 10.0, "old", None), 11.0, ("new",)),
    ],
)
def test_what_signs_at_a_moment(stored, now, expected):
    assert stored.signing(now) == expected
    assert (stored.public(now).previous_expires_at is None) == (len(expected) == 1)


def _cli(env, *args):
    return subprocess.run([COMMAND, *args], env=env, capture_output=True, timeout=60)


@pytest.mark.parametrize("command", ["serve", "work"])
@pytest.mark.parametrize(
    "value",
    [
        "whsec_my-webhook-secret",  # the example: base64 it is not
        "whsec_!!!!",  # read leniently, an empty key that anyone could sign with
        "plain-webhook-secret-value",
        "whsec_" + base64.b64encode(b"sixteen-bytes-k!").decode(),  # too short
    ],
)
def test_a_malformed_configured_secret_refuses_to_start(tmp_path, command, value):
    database = tmp_path / "s.db"
    env = env_for(f"sqlite:///{database}", "http://127.0.0.1:9", STATUS_PROXY_WEBHOOK_SECRET=value)
    result = _cli(env, command, *(["--port", str(free_port())] if command == "serve" else []))
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 2, output
    assert "STATUS_PROXY_WEBHOOK_SECRET must be whsec_" in result.stderr.decode()
    assert "base64 of 24 to 64 random bytes" in result.stderr.decode()
    assert value.removeprefix("whsec_") not in output  # named, never quoted
    assert not database.exists()  # refused before anything was opened


@pytest.mark.slow
def test_the_secret_command_prints_a_keys_secret(db_url, make_service):
    service = make_service(api_keys=list(KEYS))
    env = env_for(db_url, "http://127.0.0.1:9", STATUS_PROXY_API_KEYS=",".join(KEYS))
    first = _cli(env, "secret", "--api-key", KEYS[1])  # before any use: made now, and kept
    assert first.returncode == 0, first.stderr
    printed = first.stdout.decode().strip()
    assert signing.check(printed) and printed not in first.stderr.decode()
    assert secret_of(service, KEYS[1])["secret"] == printed
    rotated = rotate(service, KEYS[1], grace_period=60)["secret"]
    assert _cli(env, "secret", "--api-key", KEYS[1]).stdout.decode().strip() == rotated
    alpha = _cli(env, "secret", "--api-key", KEYS[0]).stdout.decode().strip()
    assert alpha == secret_of(service, KEYS[0])["secret"] != rotated
    assert _cli(env, "secret").stdout.decode().strip() == SECRET  # the open API's
    unknown = _cli(env, "secret", "--api-key", "key-gamma")
    assert unknown.returncode == 2 and b"not one of STATUS_PROXY_API_KEYS" in unknown.stderr
    assert b"key-gamma" not in unknown.stdout + unknown.stderr


def test_the_secret_command_refuses_malformed_stored_secrets(db_url, make_service):
    make_service(api_keys=list(KEYS))
    env = env_for(db_url, "http://127.0.0.1:9", STATUS_PROXY_API_KEYS=",".join(KEYS))
    del env["STATUS_PROXY_WEBHOOK_SECRET"]
    sql(
        db_url,
        "INSERT INTO settings (key, value) VALUES ('webhook_secret', 'whsec_c3BvaWx0')",
        "INSERT INTO webhook_secrets (owner, secret, created_at) "
        f"VALUES ('{owner(KEYS[0])}', 'whsec_c3BvaWx0', 0)",
    )
    for args in (("secret",), ("secret", "--api-key", KEYS[0])):
        result = _cli(env, *args)
        assert result.returncode == 1 and b"malformed" in result.stderr
        assert b"c3BvaWx0" not in result.stdout + result.stderr


def test_a_rotation_on_one_replica_signs_on_another(keyed, upstream, hooks, db_url):
    """An API-only replica rotates; the worker of another process signs with the result."""
    settings = test_settings(db_url, upstream.url, api_keys=list(KEYS))
    api_only = ServerThread(create_app(settings, workers=False)).start()
    try:
        old = secret_of(keyed, KEYS[0])["secret"]
        response = httpx.post(
            f"{api_only.url}/v1/webhook_secret/rotate",
            json={"grace_period": 3600},
            headers=auth(KEYS[0]),
            timeout=15,
        )
        assert response.status_code == 200, response.text
        new = response.json()
        assert secret_of(keyed, KEYS[0]) == new  # the other replica reads the same
    finally:
        api_only.stop()
    _, delivery = deliver(keyed, upstream, hooks, KEYS[0], "/replica")
    first, _ = signatures(delivery)
    stamp, event_id = int(delivery.headers["webhook-timestamp"]), delivery.headers["webhook-id"]
    assert first == signing.sign(new["secret"], event_id, stamp, delivery.body)
    assert verifies(old, delivery)
