"""docker-compose.yml as shipped: each status-proxy service of each profile, started with
exactly the environment `docker compose config` renders for it, becomes ready and
delivers a webhook.

There is no container engine here, so the containers' processes run on this machine:
the rendered environment is kept as it is except for what only exists inside compose's
network (the database file's volume path, the postgres service, the simulator's host
name) and the listening address.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from service.simulator import Simulator, TaskSpec
from tests.conftest import drop_postgres, postgres_url
from tests.harness import ServerThread, eventually, free_port
from tests.test_process import COMMAND, ROOT, Proc

# What the image's Dockerfile gives every container: CMD and the environment it sets.
IMAGE_CMD = ["serve", "--host", "0.0.0.0", "--port", "8080"]


def _docker_env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    import compose

    plugins = tmp_path / "docker" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(Path(compose.__file__).parent / "docker-compose")
    # Compose interpolates from the shell too: render as a fresh shell would.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATUS_PROXY_")}
    return {**env, "DOCKER_CONFIG": str(tmp_path / "docker")}


def render(tmp_path: Path, profile: str | None, dotenv: str | None) -> dict[str, dict]:
    """The services as `docker compose config` renders them, from a copy of the project."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "docker-compose.yml", project)
    if dotenv is not None:
        (project / ".env").write_text(dotenv)
    args = ["docker", "compose", "-f", str(project / "docker-compose.yml")]
    args += ["--profile", profile] if profile else []
    result = subprocess.run(
        [*args, "config", "--format", "json"], env=_docker_env(tmp_path), capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()
    services: dict[str, dict] = json.loads(result.stdout)["services"]
    return services


def simulator_key(services: dict[str, dict]) -> str | None:
    command = services["simulator"]["command"]
    return command[command.index("--api-key") + 1] if "--api-key" in command else None


def adapt(env: dict[str, str], tmp_path: Path, database: str, simulator: str) -> dict[str, str]:
    """The rendered environment, with compose's network names made local."""
    env = dict(env)
    url = env["STATUS_PROXY_DATABASE_URL"]
    if url.startswith("sqlite:////data/"):
        env["STATUS_PROXY_DATABASE_URL"] = f"sqlite:///{tmp_path}/{url.removeprefix('sqlite:////')}"
        (tmp_path / "data").mkdir(exist_ok=True)
    else:
        assert "@postgres:5432/" in url, url
        env["STATUS_PROXY_DATABASE_URL"] = database
    assert env["STATUS_PROXY_UPSTREAM_BASE_URL"] == "http://simulator:9090"
    env["STATUS_PROXY_UPSTREAM_BASE_URL"] = simulator
    return env


def start(service: dict, env: dict[str, str], cwd: Path) -> Proc:
    port = free_port()
    command = [
        "127.0.0.1" if arg == "0.0.0.0" else str(port) if arg == "8080" else arg
        for arg in service.get("command") or IMAGE_CMD
    ]
    process_env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "PYTHONUNBUFFERED": "1", **env}
    return Proc([COMMAND, *command], process_env, port, cwd=cwd).wait_ready()


@pytest.fixture
def simulator():
    def make(key: str | None) -> tuple[Simulator, ServerThread]:
        sim = Simulator(api_key=key)
        made.append(ServerThread(sim.create_app()).start())
        return sim, made[-1]

    made: list[ServerThread] = []
    yield make
    for thread in made:
        thread.stop()


EXAMPLE = (ROOT / ".env.example").read_text()


def _deliver(sim: Simulator, thread: ServerThread, api: Proc, hooks) -> None:
    task = sim.add(TaskSpec(duration=0.1, queued=0)).id
    key = {"Authorization": f"Bearer {sim.api_key}"} if sim.api_key else {}

    def done() -> bool:  # so that the first poll sees it ended
        return (
            httpx.get(f"{thread.url}/v1/videos/{task}", headers=key).json()["status"] == "completed"
        )

    eventually(done)
    answer = httpx.post(
        f"{api.url}/v1/registrations",
        json={"task_id": task, "callback_url": f"{hooks.url}/compose"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    eventually(lambda: hooks.at("/compose"), timeout=30)


@pytest.mark.parametrize("dotenv", [None, EXAMPLE], ids=["no-env-file", "env-example"])
def test_default_profile_starts_as_rendered(tmp_path, simulator, hooks, dotenv):
    services = render(tmp_path, None, dotenv)
    assert set(services) == {"status-proxy", "simulator"}
    service = services["status-proxy"]
    sim, thread = simulator(simulator_key(services))
    env = adapt(service["environment"], tmp_path, "", thread.url)
    assert env["STATUS_PROXY_WEBHOOK_SECRET"] == ""  # empty: generate one, do not refuse
    proc = start(service, env, tmp_path)
    try:
        _deliver(sim, thread, proc, hooks)
    finally:
        assert proc.stop() == 0, proc.final_output


@pytest.mark.postgres
@pytest.mark.parametrize("dotenv", [None, EXAMPLE], ids=["no-env-file", "env-example"])
def test_postgres_profile_starts_as_rendered(tmp_path, simulator, hooks, dotenv):
    services = render(tmp_path, "postgres", dotenv)
    sim, thread = simulator(simulator_key(services))
    database = postgres_url()
    running: list[Proc] = []
    try:
        for name in ("api", "worker"):
            env = adapt(services[name]["environment"], tmp_path, database, thread.url)
            running.append(start(services[name], env, tmp_path))
        api, worker = running
        assert httpx.get(f"{worker.url}/v1/registrations").status_code == 404  # no API there
        _deliver(sim, thread, api, hooks)
    finally:
        for proc in running:
            assert proc.stop() == 0, proc.final_output
        drop_postgres(database)
