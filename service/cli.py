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
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy.engine import make_url

import service
from service import logs, signing, webhook_secrets
from service.config import Settings
from service.db import UNAVAILABLE, Database
from service.runtime import Runtime, key_digest, load_secret, stored_secret

log = logging.getLogger(__name__)
# The simulator's profiles and families, named here so that `--help` does not import it.
PROFILES = ("octopusx", "new-api")
FAMILIES = ("openai-video", "new-api-task", "ark", "runway", "replicate")
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
    app: FastAPI,
    host: str,
    port: int,
    log_level: str,
    shutdown_delay: float = 0.0,
    access_log: bool = False,
) -> None:
    """Serve until a signal. status-proxy's app logs its own access lines (with request
    ids); other apps (the simulator) take uvicorn's with ``access_log``."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=30,
        access_log=access_log,
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
        # The database is ready for the service, its signing secret included, so that
        # `status-proxy secret` can print it before the service first starts.
        await load_secret(db, settings)
    finally:
        await db.dispose()
    log.info("migrations applied")
    return 0


async def _secret(settings: Settings, api_key: str | None) -> int:
    """Print the open API's signing secret (STATUS_PROXY_WEBHOOK_SECRET, else the one the
    service generated in its database), or with ``api_key`` that client key's current
    secret (made now if the key has none yet, as its first webhook would). A database that
    is not there, or that the service has not started on yet, is reported, never created."""
    if api_key is not None and not _configured(settings, api_key):
        print("status-proxy: that key is not one of STATUS_PROXY_API_KEYS", file=sys.stderr)
        return 2
    if api_key is None and settings.webhook_secret is not None:
        print(settings.webhook_secret.get_secret_value())
        return 0
    missing = _missing_sqlite_file(settings)
    if missing is not None:
        return _found_none(f"there is no database at {missing}")
    db = Database(settings)
    try:
        if api_key is None:
            stored = await stored_secret(db)
            if stored is None:
                return _found_none(
                    "the database holds no webhook secret yet: start the service once"
                )
            secret = await load_secret(db, settings)  # checked, with where it was found
        else:
            owner = key_digest(api_key).hex()
            secret = (await webhook_secrets.current(db, owner, time.time())).secret
    except (sa.exc.ProgrammingError, sa.exc.OperationalError) as exc:
        if isinstance(exc, sa.exc.OperationalError) and "no such table" not in str(exc):
            return _found_none(f"the database cannot be read ({type(exc).__name__})")
        return _found_none("the database has no schema yet: start the service once")
    except UNAVAILABLE as exc:
        return _found_none(f"the database cannot be read ({type(exc).__name__})")
    except signing.MalformedSecret as exc:
        print(f"status-proxy: {exc}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    print(secret)
    return 0


def _configured(settings: Settings, api_key: str) -> bool:
    return any(key.get_secret_value() == api_key for key in settings.api_keys)


def _missing_sqlite_file(settings: Settings) -> Path | None:
    """The absolute path of a SQLite database file that does not exist, or None."""
    url = make_url(settings.async_database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database).resolve()
    return None if path.is_file() else path


def _found_none(why: str) -> int:
    print(
        f"status-proxy: no webhook secret found: {why}.\n"
        "Run this command with the service's settings: in its directory (a relative "
        "SQLite path and .env are read from there), or with the same "
        "STATUS_PROXY_DATABASE_URL (or STATUS_PROXY_WEBHOOK_SECRET).",
        file=sys.stderr,
    )
    return 1


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from service import simulator

    app = simulator.for_family(
        args.family,
        api_key=args.api_key,
        duration=args.duration,
        fail_rate=args.fail_rate,
        profile=args.profile,
        refresh=args.refresh,
    ).create_app()
    serve_app(app, args.host, args.port, settings.log_level, access_log=True)
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option that takes a value; descriptions and epilogs
    kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is None:  # flags, and "off unless given"
            return action.help
        return super()._get_help_string(action)


def _shown(value: object) -> str:
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, tuple):
        return ",".join(_shown(part) for part in value)
    return str(value)


def _configuration() -> str:
    """The epilog: every setting's variable and default, as ``.env.example`` lists them."""
    lines = [
        "configuration (environment, or .env in the current directory; an empty value",
        "means unset; durations in seconds; see .env.example and the README):",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"  STATUS_PROXY_{name.upper():<28} {_shown(default)}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="status-proxy",
        description=(
            "Polls an OpenAI-style video upstream once per task and delivers signed "
            "Standard Webhooks when tasks end; also a gateway for creating, listing and "
            "downloading videos with the upstream key kept here."
        ),
        epilog=_configuration(),
        formatter_class=_Help,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {service.__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=description, epilog=_configuration(),
            formatter_class=_Help,
        )  # fmt: skip

    serve = command(
        "serve",
        "migrate, then serve the API and run the workers",
        "Applies migrations, then serves the API, the dashboard and /docs, and runs the "
        "poller and the delivery worker in the same process.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument(
        "--no-workers", action="store_true",
        help="serve the API only (API replicas on PostgreSQL, with `work` elsewhere)",
    )  # fmt: skip
    work = command(
        "work",
        "the poller and the delivery worker only, no API",
        "Runs the poller and the delivery worker without the API (scaled separately on "
        "PostgreSQL). With --port, also serves /healthz, /readyz and /metrics.",
    )
    work.add_argument("--host", default="127.0.0.1", help="address for --port")
    work.add_argument(
        "--port", type=int, default=None, help="serve /healthz, /readyz and /metrics here"
    )
    command(
        "migrate",
        "apply migrations and exit",
        "Applies the database migrations and exits (under a lock on PostgreSQL).",
    )
    demo = command(
        "demo",
        "the whole loop on this machine",
        "Runs a simulated upstream, a webhook receiver and the service on 127.0.0.1, "
        "creates a task through the service and prints each webhook as it arrives "
        "(a simulated task takes about 8 s). Reads no .env.",
    )
    demo.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the last webhook"
    )
    demo.add_argument(
        "--keep", action="store_true",
        help="leave the three servers running afterwards, with their addresses printed",
    )  # fmt: skip
    demo.add_argument(
        "--profile", choices=PROFILES, default="octopusx", help="which gateway the simulator plays"
    )
    sim = command(
        "simulate-upstream",
        "serve a simulated video upstream",
        "Serves a simulated upstream for local trials. The openai-video family (an "
        "OpenAI-style gateway): POST /v1/videos creates a task that is queued for 0.5 s, "
        "then in progress for --duration seconds. Every family plays its provider's status "
        "route, words and errors; POST /_sim/tasks adds a task, POST /_sim/faults injects "
        "rate limits and errors.",
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=int, default=9090, help="port to listen on")
    sim.add_argument(
        "--api-key", default=None, help="the Bearer key it demands (unset: any key or none)"
    )
    sim.add_argument(
        "--family",
        choices=FAMILIES,
        default="openai-video",
        help="which provider it plays: an OpenAI-style gateway (see --profile), new-api's "
        "task route, Volcengine Ark, Runway or Replicate",
    )
    sim.add_argument("--duration", type=float, default=20.0, help="seconds a task runs")
    sim.add_argument("--fail-rate", type=float, default=0.0, help="share of tasks that fail")
    sim.add_argument(
        "--profile",
        choices=PROFILES,
        default="octopusx",
        help="openai-video family: octopusx (video_url, live progress) or new-api (vanilla "
        "new-api: metadata.url, 'unknown' until its first refresh, coarse progress, /content "
        "ignores Range)",
    )
    sim.add_argument(
        "--refresh",
        type=float,
        default=2.0,
        help="new-api profile: seconds between its refreshes of a task (real gateways: 15-30)",
    )
    secret = command(
        "secret",
        "print a webhook signing secret",
        "Prints the secret that signs the open API's webhooks and operator events: "
        "STATUS_PROXY_WEBHOOK_SECRET, else the one the service generated in its database; "
        "with --api-key, that client key's own secret. Run it with the service's settings "
        "(its directory or its STATUS_PROXY_DATABASE_URL); it never creates a database.",
    )
    secret.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="print the secret that signs this client key's webhooks",
    )
    return top


def configuration_problems(exc: ValueError) -> list[str]:
    """Each problem of a refused configuration, named by its environment variable."""
    if not isinstance(exc, ValidationError):
        return [str(exc)]
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = f"STATUS_PROXY_{field.upper()}" if field else "the configuration"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(message if message.startswith(variable) else f"{variable}: {message}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        for problem in configuration_problems(exc):
            print(f"status-proxy: bad configuration: {problem}", file=sys.stderr)
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
            try:
                return asyncio.run(_migrate(settings))
            except UNAVAILABLE as exc:  # the type only: driver messages may carry the URL
                print(f"status-proxy: the database cannot be reached ({type(exc).__name__})",
                      file=sys.stderr)  # fmt: skip
                return 1
        if args.command == "secret":
            return asyncio.run(_secret(settings, args.api_key))
        if args.command == "simulate-upstream":
            return _simulate(args, settings)
        if args.command == "demo":
            from service import demo

            return run(demo.run(args.timeout, args.profile, keep=args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
