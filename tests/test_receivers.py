"""Receivers in the real world: what counts as accepted, the URL as registered, custom
headers, circuits per origin, per-origin concurrency and the networks allowed by name."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from service import callbacks, circuits
from service import runtime as runtime_module
from service.config import Settings
from service.runtime import Runtime
from tests.conftest import test_settings
from tests.harness import eventually, sql
from tests.rogue import Rogue


@pytest.fixture
def rogue():
    server = Rogue().start()
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/trickle", "/endless", "/cut"])
def test_a_2xx_status_line_accepts_whatever_the_body_does(make_service, upstream, rogue, path):
    # The body of /trickle takes ten seconds, far past the one-second timeout.
    service = make_service(delivery_timeout=1.0, delivery_retry_schedule=(0.2, 0.2))
    reg = service.register(upstream.add(duration=0.1, queued=0), f"{rogue.url}{path}").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    [attempt] = service.attempts(reg["id"])
    assert attempt["status_code"] == 200 and attempt["error"] is None, attempt
    assert rogue.requests[path] == 1


def test_a_refusal_keeps_the_start_of_its_body(make_service, upstream, hooks):
    hooks.receiver.plan("/no", 422)
    service = make_service(delivery_retry_schedule=(30.0,))
    reg = service.register(upstream.add(duration=0.1, queued=0), f"{hooks.url}/no").json()
    [attempt] = eventually(lambda: service.attempts(reg["id"]))
    assert attempt["status_code"] == 422 and attempt["error"].startswith("receiver answered 422")


ODD = "/ok/hook;v=1/a%2Fb/./c?sp=%2Ftriggers%2Fmanual&sig=abc%2Fdef%3D&x=%7e&y=a+b&z=%41"


def test_the_callback_url_is_sent_as_registered(service, upstream, rogue):
    task = upstream.add(duration=0.1, queued=0)
    reg = service.register(task, f"{rogue.url}{ODD}#fragment").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    assert rogue.lines == [f"POST {ODD} HTTP/1.1".encode()]


def test_a_bare_origin_is_sent_as_slash(service, upstream, rogue):
    # No path at all: the request-target is "/", and the query stays as written.
    task = upstream.add(duration=0.1, queued=0)
    service.register(task, f"{rogue.url}?to=%2Fok")
    eventually(lambda: rogue.lines)
    assert rogue.lines == [b"POST /?to=%2Fok HTTP/1.1"]


def test_every_upstream_request_keeps_its_path(tmp_path, rogue):
    """Status reads, creates and downloads go out with the path as built."""
    base = f"{rogue.url}/ok/gw%2Fx%7e"
    settings = test_settings(f"sqlite:///{tmp_path / 'x.db'}", base)

    async def run() -> None:
        runtime = Runtime(settings, workers=False)
        try:
            await runtime.upstream.fetch("task:1")
            await runtime.upstream.create(b"{}", "application/json", 2)
            response = await runtime.upstream.open_content("task:1", None)
            await response.aclose()
        finally:
            await runtime.stop()

    asyncio.run(run())
    assert rogue.lines == [
        b"GET /ok/gw%2Fx%7e/v1/videos/task%3A1 HTTP/1.1",
        b"POST /ok/gw%2Fx%7e/v1/videos HTTP/1.1",
        b"GET /ok/gw%2Fx%7e/v1/videos/task%3A1/content HTTP/1.1",
    ]


def test_networks_allowed_by_name_are_checked_at_registration_and_at_connect(
    make_service, upstream, hooks
):
    port = hooks.url.rsplit(":", 1)[1]
    networks = "127.0.0.0/8,::1/128"
    allowed = make_service(callback_allow_private=False, callback_allow_networks=networks)
    for url in ("http://10.0.0.1/h", "http://[fe80::1]/h", "http://169.254.169.254/h"):
        response = allowed.register("video_1", url)
        assert response.status_code == 422 and response.json()["error"]["param"] == "callback_url"
    task = upstream.add(duration=1.5, queued=0)
    urls = (f"http://127.0.0.1:{port}/literal", f"http://localhost:{port}/named")
    regs = [allowed.register(task, url).json()["id"] for url in urls]
    for reg in regs:
        eventually(lambda r=reg: allowed.registration(r)["state"] == "delivered")
    assert len(hooks.at("/literal")) == 1 and len(hooks.at("/named")) == 1
    # Registered while those networks were allowed; at connect time they no longer are.
    task = upstream.add(duration=1.5, queued=0)
    urls = (f"http://127.0.0.1:{port}/literal-later", f"http://localhost:{port}/named-later")
    regs = [allowed.register(task, url).json()["id"] for url in urls]
    allowed.stop()
    narrower = make_service(
        callback_allow_private=False,
        callback_allow_networks="127.0.0.2/32",
        delivery_retry_schedule=(30.0,),
    )
    for reg in regs:
        [attempt] = eventually(lambda r=reg: narrower.attempts(r))
        assert attempt["status_code"] is None and "CALLBACK_ALLOW_NETWORKS" in attempt["error"]
    assert hooks.at("/literal-later") == [] and hooks.at("/named-later") == []


def test_a_bad_network_setting_is_refused():
    with pytest.raises(ValueError, match="CIDR"):
        test_settings("sqlite:///x.db", "http://127.0.0.1:9", callback_allow_networks="10.0.0.1/8")


TOKEN = "Bearer rcv-7f3e9a-secret-token"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.__dict__!r}")


@pytest.fixture
def collect():
    handler = Collect()
    yield handler
    logging.getLogger().removeHandler(handler)


def test_custom_headers_are_sent_with_every_attempt_and_never_logged(
    make_service, upstream, hooks, collect
):
    hooks.receiver.plan("/h", 500, 200)
    service = make_service(api_keys="key-alpha,key-beta", log_level="DEBUG")
    logging.getLogger().addHandler(collect)  # after the service has set up logging
    logged = collect.lines
    wanted = {"Authorization": TOKEN, "X-Tenant": "acme  42", "User-Agent": "custom/1"}
    # Webhooks of a key are signed with that key's own secret.
    hooks.receiver.secret = service.client.get("/v1/webhook_secret").json()["secret"]
    task = upstream.add(duration=0.2, queued=0)
    created = service.register(task, f"{hooks.url}/h", headers=wanted)
    assert created.status_code == 201 and created.json()["headers"] == wanted
    reg = created.json()["id"]
    eventually(lambda: service.registration(reg)["state"] == "delivered")
    arrivals = hooks.at("/h")
    assert len(arrivals) == 2
    for delivery in arrivals:
        assert delivery.headers["authorization"] == TOKEN
        assert delivery.headers["x-tenant"] == "acme  42"
        assert delivery.headers["user-agent"] == "custom/1"
        assert delivery.verified and delivery.headers["content-type"] == "application/json"
    # Only the owning key sees them.
    assert service.registration(reg)["headers"] == wanted
    listed = service.client.get("/v1/registrations").json()["data"]
    assert listed[0]["headers"] == wanted
    other = {"Authorization": "Bearer key-beta"}
    assert service.client.get(f"/v1/registrations/{reg}", headers=other).status_code == 404
    assert service.client.get("/v1/registrations", headers=other).json()["data"] == []
    assert any("delivered" in line for line in logged), logged[:5]  # the attempts were logged
    assert not any("rcv-7f3e9a" in line for line in logged)


def test_an_echoed_header_value_stays_out_of_the_attempt_log(make_service, rogue, upstream):
    service = make_service(delivery_retry_schedule=(30.0,))
    task = upstream.add(duration=0.1, queued=0)
    reg = service.register(task, f"{rogue.url}/echo", headers={"X-Key": "sekrit-123456"}).json()
    [attempt] = eventually(lambda: service.attempts(reg["id"]))
    assert attempt["status_code"] == 400 and "[redacted]" in attempt["error"]
    assert "sekrit" not in attempt["error"]


@pytest.mark.parametrize(
    "headers",
    [
        {f"X-H{i}": "v" for i in range(11)},
        {"Host": "evil.example"},
        {"content-type": "text/plain"},
        {"Content-Length": "5"},
        {"Transfer-Encoding": "chunked"},
        {"Connection": "close"},
        {"Keep-Alive": "5"},
        {"Upgrade": "h2c"},
        {"TE": "trailers"},
        {"Proxy-Authorization": "Basic x"},
        {"Webhook-Id": "evt_forged"},
        {"webhook-signature": "v1,forged"},
        {"X-A": "1", "x-a": "2"},
        {"Bad Name": "v"},
        {"X-Bad:": "v"},
        {"": "v"},
        {"X-Long": "v" * 1025},
        {"X-Line": "ok\r\nX-Injected: 1"},
        {"X-Tab": "a\tb"},
        {"X-Utf8": "café"},
        {"X-Number": 5},
        ["X-List"],
    ],
)  # fmt: skip
def test_custom_headers_outside_the_limits_are_422(service, headers):
    response = service.register("video_1", "http://127.0.0.1:9/h", headers=headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "headers"
    values = headers.values() if isinstance(headers, dict) else headers
    assert not any(str(value) in error["message"] for value in values if len(str(value)) > 3)


def test_the_largest_allowed_headers_are_taken(service):
    headers = {f"X-H{i}": "v" * 1024 for i in range(10)}
    response = service.register("video_1", "http://127.0.0.1:9/h", headers=headers)
    assert response.status_code == 201 and response.json()["headers"] == headers


def test_headers_take_part_in_the_duplicate_rule(service):
    url = "http://127.0.0.1:9/h"
    first = service.register("video_1", url, headers={"X-Token": "a"})
    assert first.status_code == 201
    same = service.register("video_1", url, headers={"x-token": "a"})
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    other = service.register("video_1", url, headers={"X-Token": "b"})
    assert other.status_code == 409 and other.json()["error"]["param"] == "headers"
    none = service.register("video_1", url)
    assert none.status_code == 409 and none.json()["error"]["param"] == "headers"
    assert service.registration(first.json()["id"])["headers"]["X-Token"] == "a"


def requests_to(rogue, mode):
    return sum(n for path, n in rogue.requests.items() if path.startswith(f"/{mode}"))


def metric(service, name):
    for line in service.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exposed")


def all_delivered(service, regs, rogue):
    """Wait for every registration to be delivered (no time is asserted: a loaded CI
    machine drains hundreds slowly); on a timeout, show what waits."""
    deadline = time.monotonic() + 150
    try:
        for reg in regs:
            left = max(1.0, deadline - time.monotonic())
            eventually(lambda r=reg: service.registration(r)["state"] == "delivered", left)
    except AssertionError:
        print("now", time.time(), "requests", dict(rogue.requests))
        print("stuck", service.registration(reg), service.attempts(reg))
        print(
            sql(
                service.settings.database_url,
                f"SELECT * FROM events WHERE registration_id = '{reg}'",
            )
        )
        waiting = "SELECT seq, state, attempts, next_attempt_at, lease_until, first_attempt_at "
        waiting += "FROM events WHERE state <> 'delivered' ORDER BY seq"
        for rows in sql(service.settings.database_url, waiting, "SELECT * FROM circuits"):
            print(rows)
        raise


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_dead_origin_costs_a_handful_of_requests_and_holds_nobody_up(
    make_service, upstream, hooks, rogue
):
    # Retries come quickly and many: only waiting in the open circuit keeps them off.
    service = make_service(
        delivery_retry_schedule=(0.3, 0.5) + (1.0,) * 30 + (120.0,),
        circuit_cooldown=0.5,
        circuit_cooldown_max=1.0,
    )
    dead = upstream.add(duration=0.5, queued=0)
    regs = [service.register(dead, f"{rogue.url}/flaky/{i}").json()["id"] for i in range(300)]
    eventually(lambda: metric(service, "status_proxy_open_circuits") == 1, timeout=30)
    # While the circuit is open, a healthy origin's webhooks go at once.
    for _ in range(3):
        task = upstream.add(duration=0.2, queued=0)
        registered = time.time()
        service.register(task, f"{hooks.url}/healthy")
        delivery = eventually(lambda: hooks.at("/healthy")[-1:] if hooks.at("/healthy") else None)
        hooks.receiver.deliveries.clear()
        assert delivery[0].received_at - registered < 5.0
    time.sleep(2)  # a few cool-downs: a probe each, no more
    assert metric(service, "status_proxy_oldest_open_circuit_seconds") > 0
    during = requests_to(rogue, "flaky")
    assert during < 60, during  # the first few attempts, then one probe per cool-down
    rogue.down = False
    # The next probe closes the circuit; every event goes, none lost or given up.
    all_delivered(service, regs, rogue)
    assert metric(service, "status_proxy_open_circuits") == 0
    attempts = [len(service.attempts(reg)) for reg in regs]
    # Every attempt was a request: waiting in the open circuit counted none.
    assert sum(attempts) == requests_to(rogue, "flaky") < during + 300 + 20
    assert sum(n == 1 for n in attempts) > 250


@pytest.mark.timeout(300)
def test_no_event_waits_past_its_retry_window(make_service, upstream, rogue):
    service = make_service(delivery_retry_schedule=(0.2, 0.2), circuit_cooldown=30.0)
    task = upstream.add(duration=0.3, queued=0)
    regs = [service.register(task, f"{rogue.url}/flaky/{i}").json()["id"] for i in range(20)]
    for reg in regs:
        eventually(
            lambda r=reg: service.registration(r)["state"] == "failed" or service.attempts(r),
            timeout=60,
        )
        eventually(lambda r=reg: service.registration(r)["state"] == "failed", timeout=60)
    assert requests_to(rogue, "flaky") < 20  # most never reached the dead origin
    unsent = [a for reg in regs for a in service.attempts(reg) if a["status_code"] is None]
    assert unsent and all("retry window" in a["error"] for a in unsent)


def test_attempts_in_flight_per_origin_are_capped(make_service, upstream, hooks, rogue):
    # Generous timeouts: a busy machine must not open the slow origin's circuit.
    service = make_service(
        delivery_concurrency_per_origin=3, delivery_timeout=10.0, circuit_cooldown=0.2
    )
    task = upstream.add(duration=0.5, queued=0)
    regs = [service.register(task, f"{rogue.url}/slow/{i}").json()["id"] for i in range(30)]
    # Another origin is not held up by the slow one.
    quick = upstream.add(duration=0.8, queued=0)
    service.register(quick, f"{hooks.url}/quick")
    eventually(lambda: hooks.at("/quick"))
    assert requests_to(rogue, "slow") < 30
    for reg in regs:
        eventually(lambda r=reg: service.registration(r)["state"] == "delivered", timeout=30)
    assert rogue.peak == 3
    assert all(len(service.attempts(reg)) == 1 for reg in regs)  # waiting is no attempt


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Hooks.Example.com/a?b#c", "https://hooks.example.com:443"),
        ("http://example.com./x", "http://example.com:80"),
        ("http://example.com:8080", "http://example.com:8080"),
        ("https://[2001:DB8::1]:8443/h", "https://[2001:db8::1]:8443"),
        ("HTTP://10.0.0.1/h", "http://10.0.0.1:80"),
    ],
)
def test_origins(url, origin):
    assert callbacks.origin(url) == origin


def test_streaks_count_failures_after_the_last_success():
    def out(origin, ok, probe=False):
        return circuits.Outcome(origin, ok, probe)

    streaks = circuits._streaks(
        [out("a", False), out("a", True), out("a", False), out("b", False, probe=True),
         out("b", False), out("c", False, probe=True), out("c", True)]
    )  # fmt: skip
    assert streaks == {"a": (True, 1, False), "b": (False, 2, True), "c": (True, 0, False)}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_replicas_share_one_circuit(make_service, upstream, rogue):
    """Two processes on one database: one probe per cool-down between them."""
    settings = {
        "delivery_retry_schedule": (0.3, 0.5) + (1.0,) * 30 + (120.0,),
        "circuit_cooldown": 1.0,
        "circuit_cooldown_max": 1.0,
    }
    first, second = make_service(**settings), make_service(**settings)
    dead = upstream.add(duration=0.5, queued=0)
    regs = [first.register(dead, f"{rogue.url}/flaky/{i}").json()["id"] for i in range(100)]
    eventually(lambda: metric(second, "status_proxy_open_circuits") == 1, timeout=30)
    time.sleep(1.5)  # attempts in flight when it opened have landed
    before = requests_to(rogue, "flaky")
    time.sleep(4)  # four cool-downs: four probes, not eight
    assert requests_to(rogue, "flaky") - before <= 6
    rogue.down = False
    all_delivered(first, regs, rogue)
    assert (
        metric(first, "status_proxy_open_circuits")
        == metric(second, "status_proxy_open_circuits")
        == 0
    )


def test_a_retry_schedule_shorter_than_the_cool_down_is_warned_about(caplog):
    """Webhooks waiting on an open circuit die at the end of their retry window: with a
    window shorter than the cool-down, before the first probe."""
    short = Settings(delivery_retry_schedule=(2.0, 4.0, 6.0), circuit_cooldown=30.0)
    with caplog.at_level(logging.WARNING, "service.runtime"):
        runtime_module._warn_short_window(short)
        runtime_module._warn_short_window(Settings())  # the defaults: about 3 days against 30 s
    assert [record.getMessage() for record in caplog.records] == [
        "STATUS_PROXY_DELIVERY_RETRY_SCHEDULE spans 12s, less than STATUS_PROXY_CIRCUIT_COOLDOWN"
        " (30s): webhooks waiting on an open circuit die at the end of their retry window,"
        " before its first probe, some never sent"
    ]
