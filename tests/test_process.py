"""The installed command as operators run it: packaging, signals, crashes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import SECRET, UPSTREAM_KEY, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMMAND = str(BIN / "status-proxy")


def env_for(db_url, upstream_url, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATUS_PROXY_")}
    env.update(
        STATUS_PROXY_DATABASE_URL=db_url,
        STATUS_PROXY_UPSTREAM_BASE_URL=upstream_url,
        STATUS_PROXY_UPSTREAM_API_KEY=UPSTREAM_KEY,
        STATUS_PROXY_WEBHOOK_SECRET=SECRET,
        STATUS_PROXY_CALLBACK_ALLOW_PRIVATE="true",
        STATUS_PROXY_POLL_INTERVAL_MIN="0.2",
        STATUS_PROXY_POLL_INTERVAL_MAX="0.5",
        STATUS_PROXY_DELIVERY_RETRY_SCHEDULE="0.2,0.5,1",
    )
    env.update(extra)
    return env


class Proc:
    def __init__(self, args, env, port=None, cwd=ROOT):
        self.args, self.env = list(args), env
        self.port, self.cwd = port, cwd
        self._launch()

    def _launch(self):
        self.url = f"http://127.0.0.1:{self.port}" if self.port else None
        self.log = tempfile.TemporaryFile()
        self.popen = subprocess.Popen(
            self.args, env=self.env, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self):
        def ready():
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                assert self.popen.poll() is None, self.output()
                return False

        for _ in range(5):
            try:
                eventually(ready, timeout=30)
                return self
            except AssertionError:
                # The free port we picked was taken by a parallel test before we bound it.
                if "address already in use" not in self.output() or not self.port:
                    raise
                self.log.close()
                old, self.port = self.port, free_port()
                self.args = [str(self.port) if a == str(old) else a for a in self.args]
                self._launch()
        raise AssertionError("no free port after five tries")

    def output(self):
        if self.log.closed:
            return self.final_output
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM):
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(30)
        finally:
            self.final_output = self.output()
            self.log.close()


def serve(db_url, upstream_url, *extra_args, **env):
    port = free_port()
    args = [COMMAND, "serve", "--port", str(port), *extra_args]
    return Proc(args, env_for(db_url, upstream_url, **env), port)


def test_sigterm_drains_and_exits_zero(db_url, upstream):
    proc = serve(db_url, upstream.url).wait_ready()
    assert proc.stop(signal.SIGTERM) == 0


def test_shutdown_delay_fails_readiness_first_and_keeps_serving(db_url, upstream):
    proc = serve(db_url, upstream.url, STATUS_PROXY_SHUTDOWN_DELAY="3").wait_ready()
    proc.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()

    def not_ready():
        answer = httpx.get(f"{proc.url}/readyz", timeout=1)
        return answer.status_code == 503 and "shutting down" in answer.json()["reasons"]

    eventually(not_ready, timeout=2)
    # Still serving the API while the load balancer notices.
    assert httpx.get(f"{proc.url}/v1/registrations", timeout=1).status_code == 200
    assert proc.popen.poll() is None
    assert proc.stop(signal.SIGTERM) == 0  # a second signal does not wait out the delay
    assert time.monotonic() - started < 3


def test_sigint_exits_zero(db_url, upstream):
    proc = serve(db_url, upstream.url).wait_ready()
    assert proc.stop(signal.SIGINT) == 0


def test_work_command_exits_zero_on_sigterm(db_url, upstream, hooks):
    api = serve(db_url, upstream.url, "--no-workers").wait_ready()
    worker = Proc([COMMAND, "work"], env_for(db_url, upstream.url))
    try:
        task = upstream.add(duration=0.2, queued=0)
        response = httpx.post(
            f"{api.url}/v1/registrations",
            json={"task_id": task, "callback_url": f"{hooks.url}/w"},
        )
        assert response.status_code == 201
        eventually(lambda: hooks.at("/w"), timeout=20)
    finally:
        assert worker.stop() == 0
        assert api.stop() == 0


def test_work_with_a_port_serves_health_and_metrics_but_no_api(db_url, upstream):
    port = free_port()
    worker = Proc([COMMAND, "work", "--port", str(port)], env_for(db_url, upstream.url), port)
    try:
        worker.wait_ready()
        assert httpx.get(f"{worker.url}/metrics").text.startswith("# HELP")
        assert httpx.get(f"{worker.url}/v1/registrations").status_code == 404
    finally:
        assert worker.stop() == 0


def test_api_only_replica_does_not_poll(db_url, upstream, hooks):
    api = serve(db_url, upstream.url, "--no-workers").wait_ready()
    try:
        task = upstream.add(duration=0.1, queued=0)
        httpx.post(
            f"{api.url}/v1/registrations", json={"task_id": task, "callback_url": f"{hooks.url}/x"}
        )
        time.sleep(1.5)
        assert upstream.polls(task) == 0 and hooks.at("/x") == []
    finally:
        api.stop()


def test_uvicorn_factory_runs_the_workers(tmp_path, upstream, hooks):
    port = free_port()
    env = env_for(f"sqlite:///{tmp_path / 'f.db'}", upstream.url)
    args = [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app",
            "--port", str(port)]  # fmt: skip
    proc = Proc(args, env, port).wait_ready()
    try:
        task = upstream.add(duration=0.1, queued=0)
        httpx.post(
            f"{proc.url}/v1/registrations", json={"task_id": task, "callback_url": f"{hooks.url}/u"}
        )
        eventually(lambda: hooks.at("/u"))
    finally:
        proc.stop()


def test_sigkill_while_tasks_finish_loses_no_webhook(db_url, upstream, hooks):
    hooks.receiver.plan("/k", 200, delay=0.3)  # keep deliveries in flight when the kill lands
    # Short timeouts, short leases: a poll's is the upstream timeout + 5 s, a delivery's
    # the delivery timeout + 10 s (the default upstream timeout would hold a task 35 s).
    knobs = {"STATUS_PROXY_DELIVERY_TIMEOUT": "2", "STATUS_PROXY_UPSTREAM_TIMEOUT": "2"}
    proc = serve(db_url, upstream.url, **knobs).wait_ready()
    tasks = [upstream.add(duration=0.5 + n * 0.05, queued=0) for n in range(25)]
    for task in tasks:
        response = httpx.post(
            f"{proc.url}/v1/registrations", json={"task_id": task, "callback_url": f"{hooks.url}/k"}
        )
        assert response.status_code == 201
    eventually(lambda: len(hooks.at("/k")) >= 3, timeout=20)
    proc.stop(signal.SIGKILL)
    assert len({d.json["data"]["id"] for d in hooks.at("/k")}) < len(tasks)
    restarted = serve(db_url, upstream.url, **knobs).wait_ready()
    try:
        # Leases of the killed process expire (12 s at most).
        eventually(lambda: {d.json["data"]["id"] for d in hooks.at("/k")} == set(tasks), timeout=60)
    finally:
        assert restarted.stop() == 0


def test_migrate_and_secret_commands(tmp_path):
    env = env_for(f"sqlite:///{tmp_path / 's.db'}", "http://127.0.0.1:9")
    del env["STATUS_PROXY_WEBHOOK_SECRET"]
    subprocess.run([COMMAND, "migrate"], env=env, check=True, capture_output=True)
    first = subprocess.run([COMMAND, "secret"], env=env, check=True, capture_output=True)
    second = subprocess.run([COMMAND, "secret"], env=env, check=True, capture_output=True)
    secret = first.stdout.decode().strip()
    assert secret.startswith("whsec_") and second.stdout.decode().strip() == secret
    assert secret not in first.stderr.decode()


def test_bad_configuration_is_reported(tmp_path):
    env = env_for("mysql://nope", "http://127.0.0.1:9")
    result = subprocess.run([COMMAND, "migrate"], env=env, capture_output=True)
    assert result.returncode == 2 and b"bad configuration" in result.stderr


def test_wheel_ships_the_migrations_and_the_dashboard(tmp_path):
    """A non-editable install carries the migrations and can migrate an empty database,
    and carries the dashboard's templates and static files."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    [wheel] = wheels.glob("status_proxy-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert (target / "service" / "migrations" / "env.py").is_file()
    dashboard = target / "service" / "dashboard"
    assert (dashboard / "templates" / "index.html").is_file()
    assert (dashboard / "static" / "dashboard.js").is_file()
    env = env_for(f"sqlite:///{tmp_path / 'w.db'}", "http://127.0.0.1:9")
    env["PYTHONPATH"] = str(target)
    probe = "import service, sys; print(service.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, check=True, capture_output=True
    )
    assert where.stdout.decode().startswith(str(target))
    subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate"], env=env, cwd=tmp_path, check=True,
        capture_output=True,
    )  # fmt: skip


def test_compose_file_is_valid(tmp_path):
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    plugins = tmp_path / "cli-plugins"
    plugins.mkdir()
    (plugins / "docker-compose").symlink_to(binary)
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    result = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env=env, capture_output=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    scaled = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", "postgres",
         "config", "--format", "json"],
        env=env, capture_output=True,
    )  # fmt: skip
    assert scaled.returncode == 0, scaled.stderr.decode()
    services = json.loads(scaled.stdout)["services"]
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 2
    assert (
        "--no-workers" in services["api"]["command"] and services["worker"]["command"][0] == "work"
    )
    for name in ("postgres", "api", "worker", "lb"):
        assert services[name]["healthcheck"]["test"], name
    assert services["lb"]["ports"][0]["published"] == "8081"
    assert services["api"]["environment"]["STATUS_PROXY_DATABASE_URL"].startswith("postgresql://")
    broken = tmp_path / "broken.yml"
    broken.write_text("services:\n  x:\n    ports: 12\n")
    bad = subprocess.run(
        ["docker", "compose", "-f", str(broken), "config", "-q"], env=env, capture_output=True
    )
    assert bad.returncode != 0  # the check can fail


@pytest.mark.slow
def test_demo_shows_the_loop(tmp_path):
    result = subprocess.run(
        [COMMAND, "demo", "--timeout", "45"], cwd=tmp_path, capture_output=True, timeout=90
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "video.progress" in out and "video.completed" in out
    assert "signature verified" in out and "MISMATCH" not in out
    event, _ = json.JSONDecoder().raw_decode(out[out.index("{\n") :])
    assert event["metadata"] == {"order_id": "42"}
    # One call created and registered the task; the video came back through status-proxy.
    assert "through status-proxy: HTTP 200, registration reg_" in out
    assert "downloaded the video through status-proxy: HTTP 200, 262144 bytes of video/mp4" in out


@pytest.mark.slow
def test_demo_plays_vanilla_new_api_too(tmp_path):
    result = subprocess.run(
        [COMMAND, "demo", "--profile", "new-api", "--timeout", "45"],
        cwd=tmp_path, capture_output=True, timeout=90,
    )  # fmt: skip
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "upstream simulator (new-api)" in out and "upstream status=unknown" in out
    event, _ = json.JSONDecoder().raw_decode(out[out.index("{\n") :])
    assert event["type"] == "video.completed" and event["data"]["id"].startswith("task_")
    assert event["result"]["video_url"] == event["data"]["metadata"]["url"]
    assert "downloaded the video through status-proxy: HTTP 200, 262144 bytes of video/mp4" in out


@pytest.mark.slow
def test_rolling_restart_loses_nothing(db_url, upstream, hooks):
    """Start B next to A, stop A while tasks finish: every webhook arrives, once."""
    hooks.receiver.plan("/roll", 200, delay=0.2)
    knobs = {"STATUS_PROXY_DELIVERY_TIMEOUT": "2", "STATUS_PROXY_UPSTREAM_TIMEOUT": "2"}
    first = serve(db_url, upstream.url, **knobs).wait_ready()
    second = None
    try:
        tasks = [upstream.add(duration=0.5 + n * 0.1, queued=0) for n in range(30)]
        with httpx.Client(base_url=first.url, timeout=10) as client:
            for task in tasks:
                body = {"task_id": task, "callback_url": f"{hooks.url}/roll"}
                assert client.post("/v1/registrations", json=body).status_code == 201
        eventually(lambda: len(hooks.at("/roll")) >= 5, timeout=20)
        second = serve(db_url, upstream.url, **knobs).wait_ready()
        assert first.stop(signal.SIGTERM) == 0  # drains what it holds, gives back the rest
        eventually(lambda: len({d.json["data"]["id"] for d in hooks.at("/roll")}) == 30, 30)
        time.sleep(0.5)
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0
    arrivals = [d.headers["webhook-id"] for d in hooks.at("/roll")]
    assert len(arrivals) == len(set(arrivals)) == 30  # nothing lost, nothing sent twice


def test_json_logs_carry_the_request_id_and_one_access_line(db_url, upstream, hooks):
    proc = serve(db_url, upstream.url).wait_ready()
    try:
        task = upstream.add(duration=0.1, queued=0)
        answer = httpx.post(
            f"{proc.url}/v1/registrations",
            json={"task_id": task, "callback_url": f"{hooks.url}/log"},
            headers={"X-Request-ID": "req-7f3a"},
        )
        assert answer.status_code == 201 and answer.headers["x-request-id"] == "req-7f3a"
        made = httpx.get(f"{proc.url}/healthz", headers={"X-Request-ID": "bad id; <x>"})
        assert len(made.headers["x-request-id"]) == 32  # an unusable id is replaced
        eventually(lambda: hooks.at("/log"))
    finally:
        proc.stop()
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "service.access"]
    mine = [line for line in access if line.get("request_id") == "req-7f3a"]
    # At info, a request logs its access line and nothing else.
    assert [line for line in lines if line.get("request_id") == "req-7f3a"] == mine
    assert len(mine) == 1 and mine[0]["status"] == 201 and mine[0]["path"] == "/v1/registrations"
    assert mine[0]["method"] == "POST" and mine[0]["duration_ms"] >= 0
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]


def test_worker_lines_name_their_task_registration_and_event(db_url, upstream, hooks):
    proc = serve(db_url, upstream.url, STATUS_PROXY_LOG_LEVEL="debug").wait_ready()
    try:
        task = upstream.add(duration=0.1, queued=0)
        answer = httpx.post(
            f"{proc.url}/v1/registrations",
            json={"task_id": task, "callback_url": f"{hooks.url}/ids"},
        )
        registration = answer.json()["id"]
        eventually(lambda: hooks.at("/ids"))
        event = hooks.at("/ids")[0].headers["webhook-id"]
    finally:
        proc.stop()
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    polls = [line for line in lines if line["message"].startswith("poll ")]
    assert polls and all(line["task_id"] == task for line in polls)
    assert "request_id" not in polls[0]  # a worker line is not part of any request
    deliveries = [line for line in lines if " delivered: " in line["message"]]
    assert [line["message"] for line in deliveries] == [
        "video.completed delivered: attempt 1, HTTP 200"
    ]
    assert deliveries[0]["task_id"] == task
    assert deliveries[0]["registration_id"] == registration
    assert deliveries[0]["event_id"] == event
