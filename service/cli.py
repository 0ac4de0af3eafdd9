"""The ``status-proxy`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from service import logs
from service.config import Settings
from service.db import Database
from service.runtime import Runtime, load_secret

log = logging.getLogger(__name__)
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is there, as uvicorn does for ``serve``: the stock loop
    is slower at the many small exchanges a poller and a deliverer make."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on Linux
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM after a clean drain exits 0, and that
    with a shutdown delay the first signal only marks the process not ready.

    uvicorn 0.29 and later re-raise the signal once shut down, which makes the
    process die by it (status -15); we record nothing to re-raise."""

    def __init__(self, config: uvicorn.Config, shutdown_delay: float = 0.0) -> None:
        super().__init__(config)
        self.shutdown_delay = shutdown_delay
        self.exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        runtime = getattr(getattr(self.config.app, "state", None), "runtime", None)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        elif self.exit_at is None and self.shutdown_delay > 0 and runtime is not None:
            # Still serving, but /readyz says "shutting down" until the delay is over.
            runtime.draining = True
            self.exit_at = time.monotonic() + self.shutdown_delay
        else:  # no delay, or a second signal during it
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.exit_at is not None and time.monotonic() >= self.exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def serve_app(
    app: FastAPI, host: str, port: int, log_level: str, shutdown_delay: float = 0.0
) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=30,
        access_log=False,  # the app logs one access line per request, with its request id
        proxy_headers=False,
    )
    Server(config, shutdown_delay).run()


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.main import create_app

    app = create_app(settings, workers=not args.no_workers)
    serve_app(app, args.host, args.port, settings.log_level, settings.shutdown_delay)
    return 0


async def _work(settings: Settings) -> int:
    runtime = Runtime(settings, workers=True, api=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runtime.start()
        assert runtime.supervisor is not None
        workers = asyncio.create_task(runtime.supervisor.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({workers, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        failed = workers.done() and not stop.is_set()
        if failed:
            log.error("workers stopped: %s", "; ".join(runtime.problems()))
    finally:
        await runtime.stop()
    return 1 if failed else 0


async def _migrate(settings: Settings) -> int:
    db = Database(settings)
    try:
        await db.migrate()
    finally:
        await db.dispose()
    log.info("migrations applied")
    return 0


async def _secret(settings: Settings) -> int:
    db = Database(settings)
    try:
        await db.migrate()
        print(await load_secret(db, settings))
    finally:
        await db.dispose()
    return 0


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from service import simulator

    app = simulator.Simulator(
        api_key=args.api_key, duration=args.duration, fail_rate=args.fail_rate
    ).create_app()
    serve_app(app, args.host, args.port, settings.log_level)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="status-proxy",
        description="Polls an OpenAI-style video upstream and delivers signed webhooks.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="migrate, then serve the API and run the workers")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--no-workers", action="store_true", help="the API only (replicas on PostgreSQL)"
    )
    work = commands.add_parser("work", help="the poller and the delivery worker only, no API")
    work.add_argument("--host", default="127.0.0.1")
    work.add_argument(
        "--port", type=int, default=None, help="also serve /healthz, /readyz and /metrics here"
    )
    commands.add_parser("migrate", help="apply migrations and exit")
    demo = commands.add_parser("demo", help="the whole loop on this machine")
    demo.add_argument("--timeout", type=float, default=60.0)
    sim = commands.add_parser("simulate-upstream", help="serve a simulated video upstream")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9090)
    sim.add_argument("--api-key", default=None, help="the Bearer key it demands (default: any)")
    sim.add_argument("--duration", type=float, default=20.0, help="seconds a task runs")
    sim.add_argument("--fail-rate", type=float, default=0.0, help="share of tasks that fail")
    commands.add_parser("secret", help="print the webhook signing secret")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"status-proxy: bad configuration: {exc}", file=sys.stderr)
        return 2
    # `secret` prints for scripts: keep its stdout to the secret alone.
    logs.configure("WARNING" if args.command == "secret" else settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "serve":
            return _serve(args, settings)
        if args.command == "work":
            if args.port is not None:
                from service.main import create_app

                app = create_app(settings, workers=True, api=False)
                serve_app(app, args.host, args.port, settings.log_level, settings.shutdown_delay)
                return 0
            return run(_work(settings))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "secret":
            return asyncio.run(_secret(settings))
        if args.command == "simulate-upstream":
            return _simulate(args, settings)
        if args.command == "demo":
            from service import demo

            return run(demo.run(args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
