"""What an operator sees of the running command: its log lines and its readiness."""

import json
import os
import re
import signal
import socket
import subprocess

import httpx
import pytest

from service.config import Settings
from tests.harness import eventually, free_port, refused_port
from tests.test_process import COMMAND, Proc, env_for

ONE_DELIVERY = "STATUS_PROXY_DELIVERY_RETRY_SCHEDULE"


def lines(proc: Proc) -> list[dict]:
    """The JSON log lines the process wrote so far (stdout is not a terminal)."""
    found = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def start(tmp_path, upstream_url, *args, command="serve", **env) -> Proc:
    port = free_port()
    environment = env_for(f"sqlite:///{tmp_path / 'o.db'}", upstream_url, **env)
    argv = [COMMAND, command, "--port", str(port), *args]
    return Proc(argv, environment, port, cwd=tmp_path).wait_ready()


def with_message(proc: Proc, text: str) -> list[dict]:
    return [line for line in lines(proc) if text in line["message"]]


def test_start_up_summary_and_warnings(tmp_path, upstream):
    proc = start(tmp_path, upstream.url, STATUS_PROXY_UPSTREAM_API_KEY="", STATUS_PROXY_API_KEYS="")
    try:
        [summary] = with_message(proc, "starting:")
        message = summary["message"]
        assert summary["level"] == "info" and message.startswith("status-proxy ")
        assert "database sqlite:///" in message and f"upstream {upstream.url}" in message
        assert "WITHOUT a key" in message and "API open" in message and "workers on" in message
        assert with_message(proc, "STATUS_PROXY_API_KEYS is not set")
        [missing] = with_message(proc, "STATUS_PROXY_UPSTREAM_API_KEY is not set")
        assert missing["level"] == "warning"
    finally:
        assert proc.stop() == 0


def test_summary_hides_the_database_password(tmp_path, upstream):
    proc = start(tmp_path, upstream.url, "--no-workers", STATUS_PROXY_API_KEYS="k1,k2")
    try:
        [summary] = with_message(proc, "starting:")
        assert "API keyed (2 keys)" in summary["message"] and "workers off" in summary["message"]
        assert "k1" not in proc.output() and not with_message(proc, "API is open")
    finally:
        assert proc.stop() == 0
    env = env_for("postgresql://u:hunter2@127.0.0.1:1/x", upstream.url)
    from service.runtime import safe_database_url

    assert "hunter2" not in safe_database_url(env["STATUS_PROXY_DATABASE_URL"])
    assert safe_database_url("postgresql://u:hunter2@h/x") == "postgresql://u:***@h/x"


def test_work_does_not_say_the_api_is_open(tmp_path, upstream):
    proc = start(tmp_path, upstream.url, command="work", STATUS_PROXY_API_KEYS="")
    try:
        [summary] = with_message(proc, "starting:")
        assert "API off" in summary["message"]
        assert not with_message(proc, "API is open")
    finally:
        assert proc.stop() == 0


def test_state_changes_are_logged_at_info_and_library_chatter_is_not(tmp_path, upstream, hooks):
    proc = start(
        tmp_path, upstream.url, **{ONE_DELIVERY: "0.2", "STATUS_PROXY_NOT_FOUND_GRACE": "0.5"}
    )
    try:
        task = upstream.add(duration=0.2, queued=0)
        ok = httpx.post(
            f"{proc.url}/v1/registrations",
            json={"task_id": task, "callback_url": f"{hooks.url}/ok"},
        ).json()
        eventually(lambda: with_message(proc, "video.completed delivered"))
        [delivered] = with_message(proc, "video.completed delivered")
        assert delivered["registration_id"] == ok["id"] and delivered["event_id"].startswith("evt_")
        assert delivered["task_id"] == task
        assert [line for line in lines(proc) if line["message"] == "task ended: video.completed"]

        # A receiver that fails: one retry, then dead, each said with the ids.
        hooks.receiver.plan("/down", 500)
        failing_task = upstream.add(duration=0.1, queued=0)
        bad = httpx.post(
            f"{proc.url}/v1/registrations",
            json={"task_id": failing_task, "callback_url": f"{hooks.url}/down"},
        ).json()
        eventually(lambda: with_message(proc, "dead after 2 attempts"))
        [retry] = with_message(proc, "attempt 1 failed")
        assert retry["level"] == "info" and retry["registration_id"] == bad["id"]
        assert "receiver answered 500" in retry["message"] and "next attempt at" in retry["message"]
        [dead] = with_message(proc, "dead after 2 attempts")
        assert dead["level"] == "warning" and dead["registration_id"] == bad["id"]

        # A task the upstream never heard of is given up once the grace is over.
        httpx.post(
            f"{proc.url}/v1/registrations",
            json={"task_id": "video_nobody_made", "callback_url": f"{hooks.url}/gone"},
        )
        eventually(lambda: with_message(proc, "task given up: status_proxy_not_found"))
        [given_up] = with_message(proc, "task given up")
        assert given_up["level"] == "warning" and given_up["task_id"] == "video_nobody_made"

        loggers = {line["logger"] for line in lines(proc)}
        assert not {"httpx", "httpcore", "aiosqlite"} & loggers, loggers
    finally:
        assert proc.stop() == 0


def readyz(proc: Proc) -> httpx.Response:
    return httpx.get(f"{proc.url}/readyz", timeout=5)


def test_readiness_says_what_the_polls_see(tmp_path, upstream, hooks):
    proc = start(tmp_path, upstream.url)
    try:
        first = readyz(proc).json()
        assert first["status"] == "ready"
        assert first["upstream"]["state"] == "not_polled_yet"
        assert first["upstream"]["last_success_at"] is None
        task = upstream.add(duration=0.2, queued=0)
        httpx.post(
            f"{proc.url}/v1/registrations", json={"task_id": task, "callback_url": f"{hooks.url}/r"}
        )
        eventually(lambda: readyz(proc).json()["upstream"]["last_success_at"])
        assert readyz(proc).json()["upstream"]["state"] == "ok"
    finally:
        assert proc.stop() == 0


def test_an_unreachable_upstream_is_not_ready_and_named(tmp_path, hooks):
    closed = f"http://127.0.0.1:{refused_port()}"
    proc = start(tmp_path, closed, STATUS_PROXY_POLL_INTERVAL_MAX="0.3")
    try:
        httpx.post(
            f"{proc.url}/v1/registrations",
            json={"task_id": "video_a", "callback_url": f"{hooks.url}/u"},
        )

        def not_ready():
            answer = readyz(proc)
            return answer if answer.status_code == 503 else None

        body = eventually(not_ready, timeout=30).json()
        assert body["upstream"]["state"] == "unreachable"
        assert any("upstream unreachable" in reason for reason in body["reasons"]), body
        assert "timed out" not in json.dumps(body)
        assert with_message(proc, "polls in a row got no answer")
    finally:
        assert proc.stop() == 0


def test_a_refused_key_is_named(tmp_path, upstream, hooks):
    proc = start(tmp_path, upstream.url, STATUS_PROXY_UPSTREAM_API_KEY="sk-wrong")
    try:
        task = upstream.add(duration=5, queued=0)
        httpx.post(
            f"{proc.url}/v1/registrations", json={"task_id": task, "callback_url": f"{hooks.url}/k"}
        )
        body = eventually(lambda: readyz(proc).status_code == 503 and readyz(proc)).json()
        assert body["upstream"]["state"] == "key_refused"
        assert any("refused" in reason for reason in body["reasons"])
        assert "sk-wrong" not in json.dumps(body)
    finally:
        assert proc.stop() == 0


def run(args, cwd, env):
    return subprocess.run([COMMAND, *args], cwd=cwd, env=env, capture_output=True, timeout=60)


def bare_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATUS_PROXY_")}
    return {**env, **extra}


@pytest.mark.slow
def test_secret_finds_the_services_database_or_says_there_is_none(tmp_path):
    service_dir, elsewhere = tmp_path / "service", tmp_path / "elsewhere"
    service_dir.mkdir()
    elsewhere.mkdir()
    # The service's directory: default (relative) SQLite path, settings in .env.
    (service_dir / ".env").write_text("STATUS_PROXY_LOG_LEVEL=WARNING\n")
    assert run(["migrate"], service_dir, bare_env()).returncode == 0
    here = run(["secret"], service_dir, bare_env())
    secret = here.stdout.decode().strip()
    assert here.returncode == 0 and secret.startswith("whsec_")
    # Elsewhere: nothing is created, and it says where it looked.
    lost = run(["secret"], elsewhere, bare_env())
    assert lost.returncode == 1 and lost.stdout == b""
    message = lost.stderr.decode()
    assert "no webhook secret found" in message
    assert str(elsewhere / "data" / "status-proxy.db") in message
    assert not (elsewhere / "data").exists()
    # Elsewhere, with the service's database named: the same secret.
    url = f"sqlite:///{service_dir / 'data' / 'status-proxy.db'}"
    found = run(["secret"], elsewhere, bare_env(STATUS_PROXY_DATABASE_URL=url))
    assert found.stdout.decode().strip() == secret


def test_secret_on_a_database_the_service_never_used(tmp_path, db_url):
    empty = run(["secret"], tmp_path, bare_env(STATUS_PROXY_DATABASE_URL=db_url))
    assert empty.returncode == 1 and b"no webhook secret" in empty.stderr
    assert b"Traceback" not in empty.stderr


def test_migrate_without_a_database_says_so_in_one_line(tmp_path):
    closed = "postgresql://postgres:pw-not-shown@127.0.0.1:1/nothing"
    answer = run(["migrate"], tmp_path, bare_env(STATUS_PROXY_DATABASE_URL=closed))
    assert answer.returncode == 1, answer.stderr
    assert b"cannot be reached" in answer.stderr and b"Traceback" not in answer.stderr
    assert b"pw-not-shown" not in answer.stderr + answer.stdout


@pytest.mark.slow
def test_help_names_every_setting_and_default_and_there_is_a_version():
    version = run(["--version"], None, bare_env())
    assert version.returncode == 0 and version.stdout.decode().startswith("status-proxy ")
    for command in ([], ["serve"], ["work"], ["secret"], ["simulate-upstream"], ["demo"]):
        text = run([*command, "--help"], None, bare_env()).stdout.decode()
        for name in Settings.model_fields:
            assert f"STATUS_PROXY_{name.upper()}" in text, (command, name)
    serve = run(["serve", "--help"], None, bare_env()).stdout.decode()
    assert "(default: 8080)" in serve and "(default: 127.0.0.1)" in serve
    simulate = run(["simulate-upstream", "--help"], None, bare_env()).stdout.decode()
    assert "(default: 20.0)" in simulate and "queued for 0.5 s" in simulate


@pytest.mark.slow
def test_demo_keep_leaves_the_loop_running(tmp_path):
    proc = Proc([COMMAND, "demo", "--keep"], bare_env(), cwd=tmp_path)
    try:
        eventually(lambda: "Still running" in proc.output(), timeout=90)
        text = proc.output()
        proxy = re.search(r"status-proxy\s+(http://127\.0\.0\.1:\d+)", text).group(1)
        hooks = re.search(r"webhook receiver\s+(http://127\.0\.0\.1:\d+)", text).group(1)
        created = httpx.post(
            f"{proxy}/v1/videos",
            json={"model": "sora-2", "prompt": "p", "callback_url": f"{hooks}/kept"},
            timeout=10,
        )
        assert created.status_code == 200 and created.json()["registration"]["id"]
        eventually(
            lambda: "webhook video.completed" in proc.output().split("Still running")[1], timeout=60
        )
    finally:
        assert proc.stop(signal.SIGINT) == 0, proc.final_output


def test_simulator_logs_requests_and_no_traceback_for_an_aborted_upload(tmp_path):
    port = free_port()
    proc = Proc([COMMAND, "simulate-upstream", "--port", str(port)], bare_env(), port, cwd=tmp_path)
    try:
        eventually(lambda: _answers(f"http://127.0.0.1:{port}/v1/videos/none"))
        # An upload that stops halfway, as status-proxy aborts one on purpose.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
                b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhalf'
            )
        # The abort is handled before a later request is answered and logged.
        eventually(lambda: _answers(f"http://127.0.0.1:{port}/v1/videos/after"))
        eventually(lambda: "GET /v1/videos/after" in proc.output())
        output = proc.output()
        assert "GET /v1/videos/none" in output  # an access line per request
        assert "Traceback" not in output and '"level": "error"' not in output, output
    finally:
        assert proc.stop() == 0


def _answers(url):
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


@pytest.mark.slow
def test_serve_reads_env_in_its_directory_and_the_environment_wins(tmp_path, upstream):
    (tmp_path / ".env").write_text(
        "STATUS_PROXY_API_KEYS=from-dotenv\nSTATUS_PROXY_LOG_LEVEL=\nSTATUS_PROXY_WEBHOOK_SECRET=\n"
    )
    proc = start(tmp_path, upstream.url)  # the environment names no client keys
    try:
        assert httpx.get(f"{proc.url}/v1/registrations").status_code == 401
        keyed = {"Authorization": "Bearer from-dotenv"}
        assert httpx.get(f"{proc.url}/v1/registrations", headers=keyed).status_code == 200
        assert with_message(proc, "API keyed (1 key)")
    finally:
        assert proc.stop() == 0
    proc = start(tmp_path, upstream.url, STATUS_PROXY_API_KEYS="from-env")
    try:
        keyed = {"Authorization": "Bearer from-env"}
        assert httpx.get(f"{proc.url}/v1/registrations", headers=keyed).status_code == 200
    finally:
        assert proc.stop() == 0
