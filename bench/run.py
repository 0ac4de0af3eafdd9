"""Run every benchmark, write bench/results.json and print the table.

    python -m bench.run            the full run (make bench), under 10 minutes on 2 cores
    python -m bench.run --smoke    tiny sizes, for the test suite: proves it still runs
    python -m bench.run --only webhooks --before main
                                   one group, run first with the service as it is at the
                                   git ref ``main``, then as it is now: a before/after in
                                   one run
    python -m bench.run --only api --profile out/
                                   also record each status-proxy process with py-spy
                                   (200 Hz) and write its summary to out/

Servers are pinned to one core and load generators to the other (taskset), and every
figure is a ratio against a reference measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench import profile as profiler
from bench import seed
from service.runtime import key_digest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC0wMTIzNDU2Nzg5YWI="
API_KEY = "bench-client-key"
CONNECTIONS = 50
# Webhook attempts in flight in figure 4: as many as the references have connections,
# unless --in-flight says otherwise (STATUS_PROXY_DELIVERY_CONCURRENCY is 64 by default).
IN_FLIGHT = CONNECTIONS
# Where the service under test is imported from (--before), and where profiles go.
SERVICE_PATH: str | None = None
PROFILE_DIR: Path | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() else []


@contextmanager
def process(args: list[str], cpu: int, env: dict[str, str] | None = None) -> Iterator[int]:
    """A server process pinned to ``cpu``; stopped (by its PID) on the way out."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    popen = subprocess.Popen(
        [*pinned(cpu), *args], env={**os.environ, **(env or {})}, cwd=ROOT,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield popen.pid
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        log.close()


@contextmanager
def profiled(pid: int, name: str) -> Iterator[None]:
    """With --profile, py-spy records ``pid`` meanwhile, summarised to PROFILE_DIR/name."""
    if PROFILE_DIR is None:
        yield
        return
    with profiler.recording(pid, PROFILE_DIR / name):
        yield


def wait_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def client(spec: dict[str, Any], cpu: int) -> dict[str, float]:
    """Run a load generator in its own process on ``cpu``; returns requests/s. The
    process imports bench.load only: starting it costs a fraction of a second."""
    out = subprocess.run(
        [*pinned(cpu), sys.executable, "-m", "bench.load", json.dumps(spec)],
        cwd=ROOT, capture_output=True, check=True, timeout=spec["seconds"] + 120,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    return result


def service_env(db_url: str, upstream: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATUS_PROXY_")}
    env.update(
        STATUS_PROXY_DATABASE_URL=db_url,
        STATUS_PROXY_UPSTREAM_BASE_URL=upstream,
        STATUS_PROXY_UPSTREAM_API_KEY="bench-upstream-key",
        STATUS_PROXY_API_KEYS=API_KEY,
        STATUS_PROXY_WEBHOOK_SECRET=SECRET,
        STATUS_PROXY_CALLBACK_ALLOW_PRIVATE="true",
        STATUS_PROXY_LOG_LEVEL="WARNING",
    )
    if SERVICE_PATH:
        env["PYTHONPATH"] = SERVICE_PATH
    env.update(extra)
    return env


def status_proxy(*args: str) -> list[str]:
    return [str(BIN / "status-proxy"), *args]


def reference_server(kind: str, port: int, cpu: int, *extra: str) -> Any:
    return process([sys.executable, "-m", "bench.servers", kind, "--port", str(port), *extra], cpu)


# --- the figures ----------------------------------------------------------------------


def api_figures(size: dict[str, Any], work: Path) -> dict[str, Any]:
    """1: cached GET /v1/videos/{id}; 2: POST /v1/registrations; each against a bare app."""
    seconds = size["seconds"]
    results: dict[str, Any] = {}
    bare_port = free_port()
    with reference_server("bare", bare_port, cpu=0):
        wait_up(f"http://127.0.0.1:{bare_port}/v1/videos/x")
        get_bare = client(spec("GET", f"http://127.0.0.1:{bare_port}/v1/videos/video_bench",
                               seconds), cpu=1)  # fmt: skip
        post_bare = client(spec("POST", f"http://127.0.0.1:{bare_port}/v1/registrations",
                                seconds, body="registration", tag="bare"), cpu=1)  # fmt: skip
    db_url = f"sqlite:///{work / 'api.db'}"
    owner = key_digest(API_KEY).hex()  # with API keys, a key reads only its own videos
    asyncio.run(seed.cached_snapshot(db_url, "video_bench", owner))
    port = free_port()
    env = service_env(db_url, "http://127.0.0.1:9")
    serve = status_proxy("serve", "--no-workers", "--port", str(port))
    with process(serve, cpu=0, env=env) as pid:
        wait_up(f"http://127.0.0.1:{port}/readyz")
        with profiled(pid, "cached_get"):
            get_sp = client(spec("GET", f"http://127.0.0.1:{port}/v1/videos/video_bench",
                                 seconds), cpu=1)  # fmt: skip
        with profiled(pid, "register"):
            post_sp = client(spec("POST", f"http://127.0.0.1:{port}/v1/registrations", seconds,
                                  body="registration", tag="sp"), cpu=1)  # fmt: skip
    for name, ours, bare in (("cached_get", get_sp, get_bare), ("register", post_sp, post_bare)):
        assert ours["errors"] == 0 and bare["errors"] == 0, (name, ours, bare)
        results[name] = {
            "status_proxy": ours["rate"], "reference": bare["rate"],
            "ratio": ours["rate"] / bare["rate"],
        }  # fmt: skip
    return results


def references(method: str, url: str, seconds: float, **extra: Any) -> tuple[Any, Any]:
    """The raw aiohttp loop and the plain httpx loop, on the core the worker will use."""
    raw = client(spec(method, url, seconds, **extra), cpu=0)
    plain = client(spec(method, url, seconds, library="httpx", **extra), cpu=0)
    return raw, plain


def versus(rate: float, raw: dict[str, float], plain: dict[str, float]) -> dict[str, float]:
    """A client figure next to the raw aiohttp loop and the plain httpx loop."""
    return {
        "status_proxy": rate, "reference": raw["rate"], "ratio": rate / raw["rate"],
        "plain_httpx": plain["rate"], "vs_plain_httpx": rate / plain["rate"],
    }  # fmt: skip


def poller_figure(size: dict[str, Any], work: Path) -> dict[str, Any]:
    """3: polls/s the poller sustains, against raw aiohttp and plain httpx GET loops."""
    seconds = size["seconds"]
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    with reference_server("upstream", up_port, cpu=1):
        wait_up(f"{upstream}/count")
        raw, plain = references("GET", f"{upstream}/v1/videos/video_ref", seconds)
        db_url = f"sqlite:///{work / 'poll.db'}"
        asyncio.run(seed.watching(db_url, size["poll_tasks"], "http://127.0.0.1:9/hook"))
        env = service_env(
            db_url, upstream,
            STATUS_PROXY_POLL_INTERVAL_MIN="0.01", STATUS_PROXY_POLL_INTERVAL_MAX="0.01",
            STATUS_PROXY_UPSTREAM_RATE_LIMIT="0",
            STATUS_PROXY_UPSTREAM_MAX_CONCURRENCY=str(CONNECTIONS),
        )  # fmt: skip
        with process(status_proxy("work"), cpu=0, env=env) as pid:
            time.sleep(size["warmup"])
            before, start = httpx.get(f"{upstream}/count").json()["count"], time.monotonic()
            with profiled(pid, "polls"):
                time.sleep(seconds)
            after, elapsed = (
                httpx.get(f"{upstream}/count").json()["count"],
                time.monotonic() - start,
            )
    return versus((after - before) / elapsed, raw, plain)


def delivery_figure(size: dict[str, Any], work: Path) -> dict[str, Any]:
    """4: webhooks/s, signing, outbox and attempt log included, against raw POST loops."""
    seconds = size["seconds"]
    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    with reference_server("receiver", port, cpu=1):
        wait_up(f"{receiver}/count")
        raw, plain = references("POST", f"{receiver}/hook", seconds, body="webhook")
        db_url = f"sqlite:///{work / 'deliver.db'}"
        count = size["webhooks"]
        asyncio.run(seed.pending_webhooks(db_url, count, f"{receiver}/hook"))
        # IN_FLIGHT attempts at once (the references' connections by default), all to the one
        # receiver (a real deployment spreads them over many origins, 8 at most each).
        env = service_env(
            db_url, "http://127.0.0.1:9", STATUS_PROXY_DELIVERY_CONCURRENCY=str(IN_FLIGHT),
            STATUS_PROXY_DELIVERY_CONCURRENCY_PER_ORIGIN=str(IN_FLIGHT),
        )  # fmt: skip
        start_count = httpx.get(f"{receiver}/count").json()["count"]
        with process(status_proxy("work"), cpu=0, env=env) as pid:
            while httpx.get(f"{receiver}/count").json()["count"] == start_count:
                time.sleep(0.01)
            start = time.monotonic()
            deadline = start + 300
            with profiled(pid, "webhooks"):
                while time.monotonic() < deadline:
                    got = httpx.get(f"{receiver}/count").json()["count"] - start_count
                    if got >= count:
                        break
                    time.sleep(0.05)
            elapsed = time.monotonic() - start
    return {**versus(got / elapsed, raw, plain), "webhooks": got}


def footprint_figure(size: dict[str, Any], work: Path) -> dict[str, Any]:
    """5: RSS and poller CPU with many active tasks; CPU should follow the tasks *due*."""
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    found: dict[str, Any] = {}
    with reference_server("upstream", up_port, cpu=1):
        wait_up(f"{upstream}/count")
        for tasks in size["footprint_tasks"]:
            db_url = f"sqlite:///{work / f'footprint-{tasks}.db'}"
            asyncio.run(seed.watching(db_url, tasks, "http://127.0.0.1:9/hook"))
            env = service_env(
                db_url, upstream, STATUS_PROXY_UPSTREAM_RATE_LIMIT="20",
                STATUS_PROXY_POLL_INTERVAL_MIN="30", STATUS_PROXY_POLL_INTERVAL_MAX="30",
            )  # fmt: skip
            with process(status_proxy("work"), cpu=0, env=env) as pid:
                time.sleep(size["warmup"])
                cpu_before, start = cpu_seconds(pid), time.monotonic()
                time.sleep(size["seconds"])
                cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - start)
                found[str(tasks)] = {"rss_mb": rss_mb(pid), "cpu_per_s": cpu}
    small, large = (str(n) for n in size["footprint_tasks"])
    found["cpu_ratio"] = found[large]["cpu_per_s"] / max(found[small]["cpu_per_s"], 1e-6)
    return found


def million_figure(size: dict[str, Any], work: Path) -> dict[str, Any]:
    """7: 10,000, 100,000 and 1,000,000 active tasks at the default rate limit (20/s),
    each coming due in a fair rotation at that rate: RSS, the claim statement's time and
    plan, the p99 lateness of a poll and the CPU per poll, which should not grow."""
    rate = 20.0
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    found: dict[str, Any] = {"rate_limit": rate}
    with reference_server("upstream", up_port, cpu=1):
        wait_up(f"{upstream}/count")
        for tasks in size["million_tasks"]:
            db_url = f"sqlite:///{work / f'million-{tasks}.db'}"
            clock = time.monotonic()
            asyncio.run(seed.rotation(db_url, tasks, "http://127.0.0.1:9/hook", rate))
            seeded = time.monotonic() - clock
            start = time.time() + size["warmup"] + 2
            seed.due_from(db_url, start, rate)
            claim = claim_statement(db_url)
            env = service_env(
                db_url, upstream, STATUS_PROXY_UPSTREAM_RATE_LIMIT=str(int(rate)),
                # Each task comes due once in the window: the rotation sets the pace.
                STATUS_PROXY_POLL_INTERVAL_MIN="3600", STATUS_PROXY_POLL_INTERVAL_MAX="3600",
            )  # fmt: skip
            seen = len(httpx.get(f"{upstream}/count").json()["due"])
            with process(status_proxy("work"), cpu=0, env=env) as pid:
                time.sleep(max(0.0, start - time.time()) + 1)
                cpu_before, clock = cpu_seconds(pid), time.monotonic()
                polled_before = len(httpx.get(f"{upstream}/count").json()["due"])
                with profiled(pid, f"million-{tasks}"):
                    time.sleep(size["million_seconds"])
                cpu = cpu_seconds(pid) - cpu_before
                window = time.monotonic() - clock
                polls = httpx.get(f"{upstream}/count", params={"since": seen}).json()["due"]
                rss = rss_mb(pid)
            lags = sorted(at - (start + n / rate) for at, n in polls)
            measured = len(polls) - (polled_before - seen)
            found[str(tasks)] = {
                "seeded_s": seeded, "rss_mb": rss, "polls_per_s": measured / window,
                "cpu_per_s": cpu / window, "cpu_ms_per_poll": 1000 * cpu / max(measured, 1),
                "lag_p50": statistics.median(lags) if lags else None,
                "lag_p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
                **claim,
            }  # fmt: skip
    sizes = [str(n) for n in size["million_tasks"]]
    found["cpu_per_poll_ratio"] = found[sizes[-1]]["cpu_ms_per_poll"] / max(
        found[sizes[0]]["cpu_ms_per_poll"], 1e-6
    )
    return found


def claim_statement(db_url: str, repeat: int = 20) -> dict[str, Any]:
    """The poller's claim (16 tasks), timed on the seeded database and rolled back, and
    the plan SQLite chooses for it."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from service import poller
    from service.config import async_url

    async def run() -> dict[str, Any]:
        engine = create_async_engine(async_url(db_url))
        try:
            async with engine.connect() as conn:
                query = poller.due_tasks(time.time(), 16)
                expanded = query.compile(conn).construct_expanded_state()
                rows = await conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + expanded.statement, expanded.positional_parameters
                )
                plan = " / ".join(str(row[-1]) for row in rows.all())
                await conn.rollback()
                times = []
                for _ in range(repeat):
                    clock = time.perf_counter()
                    transaction = await conn.begin()
                    await poller.claim(conn, time.time(), 16, 60.0)
                    await transaction.rollback()
                    times.append(time.perf_counter() - clock)
        finally:
            await engine.dispose()
        times.sort()
        return {"claim_ms_p50": 1000 * times[len(times) // 2], "claim_plan": plan}

    return asyncio.run(run())


def latency_figure(size: dict[str, Any], work: Path) -> dict[str, Any]:
    """6: from the upstream's end of a task to the accepted webhook, at two loads."""
    up_port, rx_port = free_port(), free_port()
    upstream, receiver = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{rx_port}"
    interval_max = size["interval_max"]
    found: dict[str, Any] = {"poll_interval_max": interval_max}
    with reference_server("upstream", up_port, cpu=1), reference_server("receiver", rx_port, cpu=1):
        wait_up(f"{upstream}/count")
        wait_up(f"{receiver}/count")
        for tasks in size["latency_tasks"]:
            db_url = f"sqlite:///{work / f'latency-{tasks}.db'}"
            start = time.time() + size["warmup"]
            ends = asyncio.run(
                seed.ending(db_url, tasks, f"{receiver}/hook", start, size["spread"])
            )
            env = service_env(
                db_url, upstream, STATUS_PROXY_UPSTREAM_RATE_LIMIT="0",
                STATUS_PROXY_POLL_INTERVAL_MIN="1",
                STATUS_PROXY_POLL_INTERVAL_MAX=str(interval_max),
                STATUS_PROXY_UPSTREAM_MAX_CONCURRENCY=str(CONNECTIONS),
            )  # fmt: skip
            seen = httpx.get(f"{receiver}/count").json()["count"]
            with process(status_proxy("work"), cpu=0, env=env):
                deadline = start + size["spread"] + interval_max * 4 + 30
                arrivals: list[Any] = []
                while time.time() < deadline and len(arrivals) < tasks:
                    time.sleep(0.5)
                    arrivals = httpx.get(f"{receiver}/count", params={"since": seen}).json()[
                        "arrivals"
                    ]
            delays = sorted(at - ends[task_id] for at, task_id in arrivals if task_id in ends)
            found[str(tasks)] = {
                "delivered": len(delays),
                "p50": statistics.median(delays),
                "p99": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
                "delays": delays,
            }
    return found


# --- helpers ----------------------------------------------------------------------------


def spec(method: str, url: str, seconds: float, **extra: Any) -> dict[str, Any]:
    """What a load generator sends: a webhook body is built here, once, not in its process."""
    if extra.get("body") == "webhook":
        extra["sample"] = json.loads(seed.sample_body())
    return {"method": method, "url": url, "seconds": seconds, "connections": CONNECTIONS,
            "library": "aiohttp", "callback": "http://127.0.0.1:9/hook",
            "headers": {"Authorization": f"Bearer {API_KEY}"}, **extra}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict[str, Any]:
    packages = ["fastapi", "uvicorn", "httpx", "aiohttp", "httpx-aiohttp", "sqlalchemy",
                "aiosqlite", "uvloop", "httptools"]  # fmt: skip
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "packages": {name: metadata.version(name) for name in packages},
    }


SIZES = {
    "full": {"seconds": 8, "warmup": 3, "poll_tasks": 5000, "webhooks": 20000,
             "footprint_tasks": [10000, 100000], "latency_tasks": [1000, 10000],
             "interval_max": 5, "spread": 20, "million_tasks": [10000, 100000, 1000000],
             "million_seconds": 20},
    "smoke": {"seconds": 0.5, "warmup": 1.5, "poll_tasks": 50, "webhooks": 50,
              "footprint_tasks": [20, 200], "latency_tasks": [10], "interval_max": 1,
              "spread": 1, "million_tasks": [200], "million_seconds": 0.5},
}  # fmt: skip


def table(results: dict[str, Any]) -> str:
    rows = [
        ("1 cached GET /v1/videos/{id}, req/s", results["cached_get"], "≥ 0.6"),
        ("2 POST /v1/registrations, req/s", results["register"], "≥ 0.3"),
        ("3 upstream polls/s", results["polls"], "≥ 0.3, ≥ 2x httpx"),
        ("4 webhooks/s", results["webhooks"], "≥ 0.25, ≥ 2x httpx"),
    ]
    lines = ["| # | figure | status-proxy | reference | ratio | target |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, found, target in rows:
        extra = ""
        if "vs_plain_httpx" in found:
            extra = (
                f" ({found['vs_plain_httpx']:.1f}x plain httpx at {found['plain_httpx']:,.0f}/s)"
            )
        number, label = name.split(" ", 1)
        lines.append(
            f"| {number} | {label} | {found['status_proxy']:,.0f} | {found['reference']:,.0f} "
            f"| {found['ratio']:.2f}{extra} | {target} |"
        )
    foot = results["footprint"]
    sizes = [key for key in foot if key.isdigit()]
    parts = ", ".join(
        f"{int(n):,} tasks: {foot[n]['rss_mb']:.0f} MB, {foot[n]['cpu_per_s'] * 100:.1f}% CPU"
        for n in sizes
    )
    lines.append(f"| 5 | active tasks tracked | {parts} | — | CPU x{foot['cpu_ratio']:.2f} "
                 "| RSS ≤ 300 MB, CPU flat |")  # fmt: skip
    lat = results["latency"]
    parts = ", ".join(
        f"{int(n):,} tasks: p50 {lat[n]['p50']:.2f} s, p99 {lat[n]['p99']:.2f} s"
        for n in lat if n.isdigit()
    )  # fmt: skip
    lines.append(f"| 6 | terminal → webhook accepted | {parts} | POLL_INTERVAL_MAX "
                 f"{lat['poll_interval_max']} s | — | p99 ≤ max + 0.5 s |")  # fmt: skip
    mil = results["million"]
    parts = ", ".join(
        f"{int(n):,} tasks: {mil[n]['rss_mb']:.0f} MB, claim {mil[n]['claim_ms_p50']:.2f} ms, "
        f"lag p99 {mil[n]['lag_p99'] or 0:.2f} s, {mil[n]['cpu_ms_per_poll']:.2f} ms CPU/poll"
        for n in mil if n.isdigit()
    )  # fmt: skip
    lines.append(f"| 7 | active tasks at 20/s | {parts} | — | CPU/poll "
                 f"x{mil['cpu_per_poll_ratio']:.2f} | flat, claim by index |")  # fmt: skip
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    lat = results["latency"]
    for n in (key for key in lat if key.isdigit()):
        axis.hist(lat[n]["delays"], bins=40, alpha=0.6, label=f"{int(n):,} active tasks")
    axis.axvline(lat["poll_interval_max"], color="black", linestyle="--",
                 label="POLL_INTERVAL_MAX")  # fmt: skip
    axis.set_xlabel("seconds from the task's end upstream to the webhook accepted")
    axis.set_ylabel("webhooks")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


FIGURES = {
    "api": api_figures,
    "polls": poller_figure,
    "webhooks": delivery_figure,
    "footprint": footprint_figure,
    "latency": latency_figure,
    "million": million_figure,
}


def merge(path: Path, name: str, found: dict[str, Any]) -> None:
    """Put one group's figures into an existing results file."""
    results = json.loads(path.read_text())
    if name == "api":
        results.update(found)
    else:
        results[name] = found
    path.write_text(json.dumps(results, indent=1) + "\n")


def checkout(ref: str, into: Path) -> Path:
    """The service's code at git ``ref``, unpacked under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", ref, "service", "migrations"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def before_after(name: str, ref: str, size: dict[str, Any], work: Path) -> dict[str, Any]:
    """One figure measured with the service at ``ref``, then with the service now, back
    to back in one run; ``change`` compares the ratios to their references."""
    global SERVICE_PATH, PROFILE_DIR
    profile_dir = PROFILE_DIR
    SERVICE_PATH = str(checkout(ref, work / "before"))
    if profile_dir:
        PROFILE_DIR = profile_dir / "before"
    try:
        (work / "run-before").mkdir(parents=True, exist_ok=True)
        before = FIGURES[name](size, work / "run-before")
    finally:
        SERVICE_PATH, PROFILE_DIR = None, profile_dir
    (work / "run-after").mkdir(parents=True, exist_ok=True)
    after = FIGURES[name](size, work / "run-after")
    found: dict[str, Any] = {"figure": name, "before": ref, "results": {}}
    if "ratio" in after:  # a figure of its own, not a group
        before, after = {name: before}, {name: after}
    for key in after:
        if isinstance(after[key], dict) and "ratio" in after[key]:
            was, now = before[key], after[key]
            found["results"][key] = {
                "before": was["status_proxy"], "after": now["status_proxy"],
                "ratio_before": was["ratio"], "ratio_after": now["ratio"],
                "change": now["ratio"] / was["ratio"],
            }  # fmt: skip
        else:
            found["results"][key] = {"before": before.get(key), "after": after[key]}
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument(
        "--only", choices=FIGURES, action="append",
        help="run these figures only and print them (results.json is left alone unless --write)",
    )  # fmt: skip
    parser.add_argument(
        "--write", action="store_true", help="with --only: put these figures in --out too"
    )
    parser.add_argument(
        "--before", metavar="REF",
        help="with --only: run each figure first with the service at this git ref, then now",
    )  # fmt: skip
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="record each status-proxy process under load with py-spy into DIR",
    )  # fmt: skip
    parser.add_argument(
        "--in-flight", type=int, default=CONNECTIONS, metavar="N",
        help="webhook attempts in flight in figure 4 (default: the references' 50)",
    )  # fmt: skip
    args = parser.parse_args()
    global PROFILE_DIR, IN_FLIGHT
    PROFILE_DIR, IN_FLIGHT = args.profile, args.in_flight
    size = SIZES["smoke" if args.smoke else "full"]
    if args.only:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.only:
                if args.before:
                    print(json.dumps(before_after(name, args.before, size, Path(tmp)), default=str))
                else:
                    found = FIGURES[name](size, Path(tmp))
                    print(name, json.dumps(found, default=str)[:2000])
                    if args.write:
                        merge(args.out, name, found)
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {"machine": machine(), "size": "smoke" if args.smoke else "full"}
        results.update(api_figures(size, work))
        results["polls"] = poller_figure(size, work)
        results["webhooks"] = delivery_figure(size, work)
        results["footprint"] = footprint_figure(size, work)
        results["latency"] = latency_figure(size, work)
        results["million"] = million_figure(size, work)
    results["seconds"] = time.monotonic() - started
    if not args.smoke:
        plot(results, args.out.with_name("latency.png"))
    for found in results["latency"].values():
        if isinstance(found, dict):
            delays = found.pop("delays")
            found["p90"] = delays[min(len(delays) - 1, int(len(delays) * 0.9))] if delays else None
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
