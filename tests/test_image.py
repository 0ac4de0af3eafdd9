"""The container image, built and run for real with podman (``make image-test``).

No Docker engine runs here and the official Python base cannot be pulled, so the
base is made locally: a minimal Debian from debootstrap with Python, imported into
podman and passed to the Dockerfile as ``PYTHON_IMAGE``. Everything after that is
the Dockerfile as operators build it. Takes a minute or two, so ``make test`` skips
it and ``.ci/run`` runs it through ``make image-test``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import SECRET, UPSTREAM_KEY, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
BASE = "localhost/status-proxy-base:bookworm"
IMAGE = "localhost/status-proxy:image-test"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_FROM_CONTAINER = "10.0.2.2"  # slirp4netns's address for the host's loopback
# podman here: builds cannot use namespaces; runs need runc on cgroupfs and limits
# no higher than the sandbox's own (podman's defaults would raise them).
BUILD = ["--isolation=chroot", "--network=host", "--format=docker"]
RUN = [
    "--runtime=runc",
    "--cgroup-manager=cgroupfs",
    "--ulimit=nofile=1024:1024",
    "--ulimit=nproc=4096:4096",
]

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("STATUS_PROXY_IMAGE_TEST") != "1",
        reason="builds a container image for minutes: run it with `make image-test`",
    ),
    pytest.mark.timeout(900),
]


def podman(*args: str, check: bool = True, timeout: float = 600) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:2])} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def debian_mirror() -> list[str]:
    """The mirror this machine's apt already uses, so no address is written here."""
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in source.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return [line.split()[1]]
    return []  # debootstrap's own default


def make_base(work: Path) -> None:
    """A Debian bookworm root with Python, standing in for the official slim image."""
    root = work / "rootfs"
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(root),
            *debian_mirror(),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    # The official image has `python` on PATH; the Dockerfile relies on it.
    (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    archive = work / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    # pip in the build trusts the host's CA bundle, which the build mounts.
    podman("import", "--change", f"ENV PIP_CERT={CA_BUNDLE}", str(archive), BASE)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    missing = [tool for tool in ("podman", "debootstrap", "runc") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"image test needs {', '.join(missing)} (Debian packages)")
    if subprocess.run(["podman", "image", "exists", BASE]).returncode != 0:
        make_base(tmp_path_factory.mktemp("base"))
    podman(
        "build",
        *BUILD,
        "--build-arg",
        f"PYTHON_IMAGE={BASE}",
        "--volume",
        f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "--tag",
        IMAGE,
        str(ROOT),
    )
    return IMAGE


def from_container(url: str) -> str:
    """A 127.0.0.1 address of this host as the container reaches it through slirp4netns."""
    return url.replace("127.0.0.1", HOST_FROM_CONTAINER)


@pytest.fixture
def container(image: str, upstream, hooks) -> Iterator[tuple[str, str]]:
    """The image with its default command, its port published on 127.0.0.1 only."""
    name = f"status-proxy-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-data"
    port = free_port()
    podman("volume", "create", volume)
    try:  # cleaned up even when the run itself fails
        podman(
            "run",
            "--detach",
            "--name",
            name,
            *RUN,
            "--network=slirp4netns:allow_host_loopback=true",
            "--publish",
            f"127.0.0.1:{port}:8080",
            "--volume",
            f"{volume}:/data",
            "--env",
            f"STATUS_PROXY_UPSTREAM_BASE_URL={from_container(upstream.url)}",
            "--env",
            f"STATUS_PROXY_UPSTREAM_API_KEY={UPSTREAM_KEY}",
            "--env",
            f"STATUS_PROXY_WEBHOOK_SECRET={SECRET}",
            "--env",
            "STATUS_PROXY_CALLBACK_ALLOW_PRIVATE=true",
            "--env",
            "STATUS_PROXY_POLL_INTERVAL_MIN=0.2",
            "--env",
            "STATUS_PROXY_POLL_INTERVAL_MAX=0.5",
            image,
        )
        yield name, f"http://127.0.0.1:{port}"
    finally:
        podman("rm", "--force", "--time", "5", name, check=False)
        podman("volume", "rm", "--force", volume, check=False)


def test_image_configuration(image: str) -> None:
    config = json.loads(podman("image", "inspect", image))[0]
    assert config["Config"]["User"] == "10001:10001"  # never root
    assert config["Config"]["Entrypoint"] == ["status-proxy"]
    assert config["Config"]["Cmd"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "/data" in config["Config"]["Volumes"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    # The final stage carries no compilers or build tools.
    tools = podman(
        "run",
        "--rm",
        *RUN,
        "--entrypoint",
        "sh",
        image,
        "-c",
        "for t in gcc cc make git; do command -v $t; done; true",
    )
    assert tools.strip() == ""


def test_container_polls_and_delivers_a_signed_webhook(container, upstream, hooks) -> None:
    name, url = container

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    eventually(ready, timeout=60)
    task = upstream.add(duration=0.5, queued=0)
    answer = httpx.post(
        f"{url}/v1/registrations",
        json={"task_id": task, "callback_url": from_container(f"{hooks.url}/image")},
    )
    assert answer.status_code == 201, answer.text
    eventually(lambda: hooks.at("/image"), timeout=30)
    delivery = hooks.at("/image")[0]
    assert delivery.verified and delivery.json["data"]["status"] == "completed"

    assert podman("exec", name, "id", "-u").strip() == "10001"
    assert "status-proxy.db" in podman("exec", name, "ls", "/data")
    assert podman("healthcheck", "run", name, check=False) == ""  # healthy: prints nothing
    podman("stop", "--time", "20", name)  # SIGTERM: drains, exits 0
    assert podman("inspect", name, "--format", "{{.State.ExitCode}}").strip() == "0"
