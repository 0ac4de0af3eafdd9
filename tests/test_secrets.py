"""No secret ever reaches a log line or a response, even at debug level."""

import base64
import signal

import httpx

from tests.harness import SECRET, UPSTREAM_KEY, eventually
from tests.test_process import serve

CLIENT_KEYS = ("client-key-alpha-5d2e", "client-key-beta-91f0")
DB_PASSWORD = "db-password-77c1"
OPERATOR_TOKEN = "operator-token-0c4a"
RECEIVER_TOKEN = "receiver-header-token-e8b2"


def with_password(db_url):
    if db_url.startswith("postgresql://postgres@"):  # trust auth ignores it; we must too
        return db_url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    return db_url


def test_a_full_run_at_debug_level_leaks_no_secret(db_url, upstream, hooks):
    proc = serve(
        with_password(db_url),
        upstream.url,
        STATUS_PROXY_LOG_LEVEL="DEBUG",
        STATUS_PROXY_API_KEYS=",".join(CLIENT_KEYS),
        STATUS_PROXY_OPERATOR_WEBHOOK_URL=f"{hooks.url}/operator?token={OPERATOR_TOKEN}",
    ).wait_ready()
    seen = []
    signing_secrets = []  # each key's, as its own secret route answered them

    def call(method, path, key=CLIENT_KEYS[0], **kwargs):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.request(method, proc.url + path, headers=headers, timeout=10, **kwargs)
        if path.startswith("/v1/webhook_secret") and response.status_code == 200:
            signing_secrets.append(response.json()["secret"])  # the one route that may
        else:
            seen.append(f"{response.status_code} {response.headers} {response.text}")
        return response

    try:
        task = upstream.add(duration=0.3, queued=0)
        body = {"task_id": task, "callback_url": f"{hooks.url}/s", "metadata": {"a": 1}}
        reg = call("POST", "/v1/registrations", json=body).json()
        eventually(lambda: hooks.at("/s"))
        # Each key's signing secret, a rotation with a grace period, and refused tries.
        for key in CLIENT_KEYS:
            assert call("GET", "/v1/webhook_secret", key=key).status_code == 200
        assert (
            call("POST", "/v1/webhook_secret/rotate", json={"grace_period": 60}).status_code == 200
        )
        assert (
            call("POST", "/v1/webhook_secret/rotate", json={"grace_period": -1}).status_code == 422
        )
        assert call("GET", "/v1/webhook_secret", key="wrong-key").status_code == 401
        call("POST", f"/v1/registrations/{reg['id']}/redeliver")  # signed twice now
        eventually(lambda: len(hooks.at("/s")) == 2)
        assert call("GET", "/v1/registrations", key="wrong-key").status_code == 401
        assert call("GET", "/v1/registrations", key=None).status_code == 401
        assert call("GET", f"/v1/registrations/{reg['id']}", key=CLIENT_KEYS[1]).status_code == 404
        assert call("GET", f"/v1/registrations/{reg['id']}/deliveries").status_code == 200
        assert call("GET", f"/v1/videos/{task}").status_code == 200
        assert call("GET", "/v1/videos/video_nowhere").status_code == 404
        assert call("POST", "/v1/registrations", content=b"{bad").status_code == 415
        # The gateway routes carry our upstream key upstream; it never comes back.
        made = call("POST", "/v1/videos", json={"model": "m", "callback_url": f"{hooks.url}/g"})
        assert made.status_code == 200
        eventually(lambda: hooks.at("/g"), timeout=20)
        assert call("GET", f"/v1/videos/{made.json()['id']}/content").status_code == 200
        upstream.sim.faults.create_status = 401  # our upstream key refused: said as such
        refused = call("POST", "/v1/videos", json={"model": "m"})
        assert refused.status_code == 502
        assert refused.json()["error"]["code"] == "upstream_key_refused"
        upstream.sim.faults.create_status = None
        for path in ("/readyz", "/metrics", "/openapi.json", "/healthz", "/dashboard"):
            call("GET", path)
        # The dashboard: a refused key and a good one in its login form.
        assert call("POST", "/dashboard/login", key=None, data={"key": "wrong"}).status_code == 401
        assert (
            call("POST", "/dashboard/login", key=None, data={"key": CLIENT_KEYS[1]}).status_code
            == 303
        )
        # The upstream stops taking our key: the alarm must not quote it.
        upstream.sim.api_key = "sk-rotated-elsewhere"
        call("POST", "/v1/registrations", json={**body, "task_id": upstream.add(duration=5)})
        eventually(lambda: call("GET", "/readyz").status_code == 503)
        # Operator events went out (to a URL with a token), and a test send with a
        # custom header, and a recovery.
        eventually(lambda: hooks.at("/operator"), timeout=20)
        test = {"callback_url": f"{hooks.url}/t", "headers": {"X-Token": RECEIVER_TOKEN}}
        assert call("POST", "/v1/webhook_test", json=test).json()["status_code"] == 200
        assert call("POST", "/v1/deliveries/recover", json={"since": 0}).status_code == 202
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    output = proc.output()
    assert '"level": "debug"' in output  # the run really logged at debug level
    secrets = [UPSTREAM_KEY, SECRET, SECRET.removeprefix("whsec_"), DB_PASSWORD, *CLIENT_KEYS]
    secrets += [OPERATOR_TOKEN, RECEIVER_TOKEN]
    secrets.append(base64.b64decode(SECRET.removeprefix("whsec_")).hex())
    assert len(set(signing_secrets)) == 3  # two keys' secrets and one rotated in
    for secret in signing_secrets:
        secrets += [secret, secret.removeprefix("whsec_")]
        secrets.append(base64.b64decode(secret.removeprefix("whsec_")).hex())
    for secret in secrets:
        assert secret not in output, f"{secret!r} in the logs"
        for answer in seen:
            assert secret not in answer, f"{secret!r} in a response: {answer[:200]}"
