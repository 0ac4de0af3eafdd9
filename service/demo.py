"""``status-proxy demo``: the simulator, a receiver and the service, wired up on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from service import simulator
from service.cli import Server
from service.config import Settings
from service.db import Database
from service.main import create_app
from service.receiver import Delivery, Receiver
from service.runtime import load_secret

# A stand-in reference image for the multipart create (a PNG signature and some bytes).
FRAME = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64


def listen() -> socket.socket:
    """A socket on a free port of 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Background:
    """One uvicorn server running in this event loop."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = listen()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False)
        self.server = Server(config)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Background:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                await self.task
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


def _show(delivery: Delivery) -> None:
    event = delivery.json
    data = event["data"]
    mark = "signature verified" if delivery.verified else "SIGNATURE MISMATCH"
    print(
        f"  webhook {event['type']:<16} upstream status={data.get('status')!s:<11} "
        f"progress={data.get('progress')!s:<4} {mark}  webhook-id={event['id']}"
    )
    if event["type"] != "video.progress":
        print(json.dumps(event, indent=2))


TASK_SECONDS = 8.0  # how long each simulated task of the demo runs, after 0.5 s queued
UPSTREAM_KEY = "demo-upstream-key"


async def run(
    timeout: float = 60.0, profile: simulator.Profile = "octopusx", keep: bool = False
) -> int:
    """Create a task through status-proxy (registered in the same call), print each
    webhook until the last one, then download the video through status-proxy. The
    simulator plays octopusx or vanilla new-api (``profile``). With ``keep``, leave the
    three servers running until interrupted."""
    upstream = simulator.Simulator(
        api_key=UPSTREAM_KEY, duration=TASK_SECONDS, profile=profile, refresh=2.0
    )
    done = asyncio.Event()

    def arrived(delivery: Delivery) -> None:
        _show(delivery)
        if delivery.json["type"] != "video.progress":
            done.set()

    receiver = Receiver(on_delivery=arrived)
    with tempfile.TemporaryDirectory() as folder:
        async with Background(upstream.create_app()) as sim:
            settings = Settings(
                _env_file=None,  # the demo is self-contained: no .env, no client keys
                api_keys=[],
                database_url=f"sqlite:///{Path(folder) / 'demo.db'}",
                upstream_base_url=sim.url,
                upstream_api_key=UPSTREAM_KEY,
                callback_allow_private=True,
                poll_interval_min=1.0,
                poll_interval_max=3.0,
                log_level="WARNING",
            )
            async with (
                Background(receiver.create_app()) as hooks,
                Background(create_app(settings)) as proxy,
                httpx.AsyncClient(timeout=10) as client,
            ):
                receiver.secret = await _secret(settings)
                print(f"status-proxy on {proxy.url}, upstream simulator ({profile}) on {sim.url}")
                # One call: status-proxy creates the task upstream with its own key and
                # registers the callback; the client never sees the upstream key.
                created = await _create(client, proxy.url, f"{hooks.url}/webhooks/video", profile)
                video = created.json()
                task_id = video["id"]
                print(
                    f"created task {task_id} through status-proxy: HTTP {created.status_code}, "
                    f"registration {video['registration']['id']}"
                )
                started = time.monotonic()
                try:
                    await asyncio.wait_for(done.wait(), timeout)
                except TimeoutError:
                    print(f"no terminal webhook within {timeout:g}s")
                    return 1
                took = time.monotonic() - started
                print(f"terminal webhook arrived {took:.1f}s after creating the task")
                download = await client.get(f"{proxy.url}/v1/videos/{task_id}/content")
                print(
                    f"downloaded the video through status-proxy: HTTP {download.status_code}, "
                    f"{len(download.content)} bytes of {download.headers.get('content-type')}"
                )
                if keep:
                    await _keep(proxy.url, sim.url, hooks.url, receiver.secret)
    return 0


async def _create(
    client: httpx.AsyncClient, proxy: str, callback: str, profile: str
) -> httpx.Response:
    """octopusx's Doubao channel takes a multipart form with reference frames; vanilla
    new-api ignores uploaded files for Doubao, so its create is plain JSON."""
    events = "video.completed,video.failed,video.progress"
    headers = {"Idempotency-Key": f"demo-order-42-{profile}"}
    if profile == "new-api":
        body = {
            "model": "doubao-seedance-1-0-pro-250528",
            "prompt": "a cat surfing",
            "seconds": "5",
            "callback_url": callback,
            "events": events.split(","),
            "callback_metadata": {"order_id": "42"},
        }
        return await client.post(f"{proxy}/v1/videos", json=body, headers=headers)
    return await client.post(
        f"{proxy}/v1/videos",
        data={
            "model": "doubao-seedance-1-0-pro",
            "prompt": "a cat surfing",
            "size": "1280x720",
            "seconds": "5",
            "callback_url": callback,
            "events": events,
            "callback_metadata": json.dumps({"order_id": "42"}),
        },
        files={"first_frame_image": ("first.png", FRAME, "image/png")},
        headers=headers,
    )


async def _keep(proxy: str, sim: str, hooks: str, secret: str | None) -> None:
    """Say how to use what runs, then wait for Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"""
Still running (--keep); Ctrl-C stops all three:
  status-proxy        {proxy}   (open API; dashboard at {proxy}/dashboard, docs at {proxy}/docs)
  upstream simulator  {sim}   (key {UPSTREAM_KEY}; each task runs {TASK_SECONDS:g} s)
  webhook receiver    {hooks}/<any path>   (prints what arrives, checks the signature)
  signing secret      {secret}

Create and register a task in one call:
  curl -s {proxy}/v1/videos -H 'Content-Type: application/json' \\
    -d '{{"model": "sora-2", "prompt": "a cat surfing", "callback_url": "{hooks}/hooks"}}'
""",
        flush=True,
    )
    await stop.wait()
    print("stopping")


async def _secret(settings: Settings) -> str:
    db = Database(settings)
    try:
        return await load_secret(db, settings)
    finally:
        await db.dispose()
