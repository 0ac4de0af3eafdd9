"""What every simulated provider shares: its tasks on a clock, the faults tests inject,
the bytes its answers come in, and the admin routes tests drive it by.

- ``POST /_sim/tasks`` (a ``TaskSpec``) adds a task and answers it as the provider would;
- ``POST /_sim/faults`` (``Faults``) sets what share of status requests fail, and how:
  a 429 with the provider's body (and ``Retry-After`` when asked), a 503, a 400, a 403,
  a 200 that is no task, bytes in odd encodings, latency; ``per_second`` plays the
  provider's rate limit itself (a token bucket: past it, the provider's 429);
- ``POST /_sim/key`` changes the key it demands; ``GET /_sim/stats`` counts requests.

Each provider (a ``Stage`` subclass) says how a task reads at each phase of its clock
and how its errors look: not found, a refused key (401), a rate limit (429).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import random
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.simulator import new_api
from service.simulator.clock import SimTask, TaskSpec

Encoding = Literal["utf-8", "bom", "utf-16", "latin-1", "lone-surrogate"]
BAD_REQUEST = {"code": "invalid_request", "message": "model is busy", "data": None}


class Faults(BaseModel):
    """Body of ``POST /_sim/faults``: what share of requests fail, and how."""

    rate_limit: float = 0.0  # share answered 429
    retry_after: str | None = None
    per_second: float | None = None  # the provider's own limit: past it, its 429
    server_error: float = 0.0  # share answered 503
    bad_request: float = 0.0  # share answered 400 with a code other than task_not_exist
    latency: float = 0.0  # seconds added to every status request
    not_found_status: Literal[400, 404] = 400  # new-api answers 400 task_not_exist
    create_status: int | None = None  # answer creates with this error status
    create_failures: int | None = None  # only this many creates fail so (None: all)
    create_latency: float = 0.0  # seconds added to every create
    not_video: float = 0.0  # share of status requests answered 200 with something else
    not_video_body: Literal["error", "html", "list", "null"] = "error"
    forbidden: float = 0.0  # share answered 403 for any task (a banned user: the key's)
    encoding: Encoding = "utf-8"  # how status answers' JSON comes in bytes
    content_status: Literal[403, 502] | None = None  # new-api's URL block, an expired link


class Bucket:
    """A token bucket of ``rate`` requests a second (a burst of as many)."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.at = 0.0
        self.rate = 0.0

    def take(self, rate: float, now: float) -> float:
        """0 when a request may pass now, else the seconds until one may."""
        if rate != self.rate:
            self.rate, self.tokens, self.at = rate, max(1.0, rate), now
        self.tokens = min(max(1.0, rate), self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class Stage:
    """A simulated provider's state, its answers and its routes. Subclasses set
    ``name`` and ``route`` (the status route, with ``{task_id}``), and say how a task
    reads (``render``) and how their errors look."""

    name = "stage"
    route = "/tasks/{task_id}"

    def __init__(self, api_key: str | None = None, duration: float = 20.0) -> None:
        self.api_key = api_key
        self.duration = duration
        self.tasks: dict[str, SimTask] = {}
        self.faults = Faults()
        self.polls: dict[str, int] = {}
        self.requests = 0
        self.rng = random.Random()
        self.bucket = Bucket()

    # --- what each provider says differently -------------------------------------

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def task_refresh(self) -> float:
        """Seconds between the provider's own refreshes of a new task (0: always live)."""
        return 0.0

    def render(self, task: SimTask, now: float, base_url: str) -> Any:
        """The task as the provider answers its status route."""
        raise NotImplementedError

    def authorised(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def rejected(self, request: Request) -> Response | None:
        """A request the provider refuses before looking (a missing required header)."""
        return None

    def refused(self) -> Response:
        return JSONResponse({"error": {"message": "invalid token"}}, status_code=401)

    def missing(self) -> Response:
        if self.faults.not_found_status == 404:
            return JSONResponse({"error": {"message": "not found"}}, status_code=404)
        return JSONResponse(new_api.NOT_EXIST, status_code=400)

    def limited(self, wait: float) -> Response:
        """The 429 of a rate limit that lifts in ``wait`` seconds."""
        return JSONResponse({"error": {"message": "too many"}}, 429, headers=self.retry_after())

    def unavailable(self) -> Response:
        return JSONResponse({"error": {"message": "try later"}}, status_code=503)

    def bad_request(self) -> Response:
        return JSONResponse(BAD_REQUEST, status_code=400)

    def forbidden(self) -> Response:
        return JSONResponse(new_api.MODEL_LIMIT, status_code=403)

    def task_error(self, task: SimTask) -> Response:
        """The error a task was set to answer instead of itself: ``hidden`` is the 403 of
        a key that may not see it, any other a passing 503."""
        return self.forbidden() if task.error == "hidden" else self.unavailable()

    def routes(self, app: FastAPI) -> None:
        """The provider's own routes: its status route."""

        @app.get(self.route)
        async def get_task(task_id: str, request: Request) -> Response:
            return await self.status(task_id, request)

    # --- shared ----------------------------------------------------------------------

    def retry_after(self) -> dict[str, str]:
        """The ``Retry-After`` header tests asked for, if any."""
        return {"Retry-After": self.faults.retry_after} if self.faults.retry_after else {}

    def add(self, spec: TaskSpec, **fields: str) -> SimTask:
        model = spec.model or fields.get("model", "doubao-seedance-1-0-pro-250528")
        task = SimTask(
            id=spec.id or self.new_id(),
            model=model,
            prompt=fields.get("prompt", ""),
            seconds=fields.get("seconds", "5"),
            size=fields.get("size", "1280x720"),
            created=time.time(),
            queued=spec.queued,
            duration=spec.duration,
            outcome=spec.outcome,
            invisible_for=spec.invisible_for,
            words=spec.words,
            empty_fields=spec.empty_fields,
            no_video=spec.no_video,
            starts_when_polled=spec.starts_when_polled,
            content_size=spec.content_size,
            family=spec.family or new_api.family_of(model),
            view=spec.view,
            error=spec.error,
            error_for=spec.error_for,
            refresh=self.task_refresh(),
            encoding=spec.encoding,
        )
        self.tasks[task.id] = task
        return task

    def encoded(self, body: Any, status_code: int = 200, encoding: str = "utf-8") -> Response:
        """A JSON answer in the bytes ``faults.encoding`` asks for: plain UTF-8, a UTF-8
        byte-order mark first, UTF-16 with its mark, Latin-1 (with a non-ASCII field),
        or UTF-8 with a lone surrogate escape (which strict parsers refuse). A task's own
        ``encoding`` (any Python codec: utf-16-le, utf-32, utf-8-sig) comes before it."""
        if encoding == "utf-8":
            encoding = self.faults.encoding
        if encoding in ("latin-1", "lone-surrogate") and isinstance(body, dict) and body:
            body = {**body, "title": "café crème"}
        text = json.dumps(body, ensure_ascii=False)
        if encoding == "lone-surrogate":
            text = text.replace("café crème", "caf\\ud800")
        if encoding == "bom":
            data = codecs.BOM_UTF8 + text.encode()
        elif encoding == "utf-16":
            data = text.encode("utf-16")
        elif encoding == "latin-1":
            data = text.encode("latin-1", "replace")
        elif encoding not in ("utf-8", "lone-surrogate"):
            data = text.encode(encoding)
        else:
            data = text.encode()
        return Response(data, status_code, media_type="application/json")

    async def status(self, task_id: str, request: Request, view: str = "") -> Response:
        """The status route: latency, the key, faults, then the task as ``render``
        (or ``render_as(view)``) gives it."""
        self.requests += 1
        self.polls[task_id] = self.polls.get(task_id, 0) + 1
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        if not self.authorised(request):
            return self.refused()
        refusal = self.rejected(request) or self.fault()
        if refusal is not None:
            return refusal
        task = self.tasks.get(task_id)
        now = time.time()
        if task is not None and task.starts_when_polled:
            task.created, task.starts_when_polled = now, False
        if task is None or now - task.created < task.invisible_for:
            return self.missing()
        if task.failing(now):
            return self.task_error(task)
        body = self.render_as(view, task, now, str(request.base_url))
        return self.encoded(body, encoding=task.encoding)

    def render_as(self, view: str, task: SimTask, now: float, base_url: str) -> Any:
        """The task on one of the provider's status routes (it has one: ``render``)."""
        return self.render(task, now, base_url)

    def fault(self) -> Response | None:
        """A request-wide fault: the rate limit, else one drawn by share (429, 503, 400,
        403, or a 200 that is no task)."""
        faults = self.faults
        if faults.per_second:
            wait = self.bucket.take(faults.per_second, time.monotonic())
            if wait:
                return self.limited(wait)
        roll = self.rng.random()
        if roll < faults.rate_limit:
            return self.limited(float(faults.retry_after or 1))
        roll -= faults.rate_limit
        if roll < faults.server_error:
            return self.unavailable()
        roll -= faults.server_error
        if roll < faults.bad_request:
            return self.bad_request()
        roll -= faults.bad_request
        if roll < faults.forbidden:
            return self.forbidden()
        roll -= faults.forbidden
        if roll < faults.not_video:
            if faults.not_video_body == "html":
                return Response(new_api.HTML_PAGE, 200, media_type="text/html")
            return self.encoded(new_api.NOT_VIDEO[faults.not_video_body])
        return None

    def create_app(self) -> FastAPI:
        app = FastAPI(title=f"status-proxy upstream simulator ({self.name})")
        app.state.simulator = self
        self.routes(app)

        @app.post("/_sim/tasks")
        async def add_task(spec: TaskSpec, request: Request) -> Any:
            return self.render(self.add(spec), time.time(), str(request.base_url))

        @app.post("/_sim/faults")
        async def set_faults(faults: Faults) -> Faults:
            self.faults = faults
            return faults

        @app.post("/_sim/key")
        async def rotate_key(body: dict[str, str | None]) -> dict[str, str]:
            self.api_key = body.get("api_key")
            return {"status": "rotated"}

        @app.get("/_sim/stats")
        async def stats() -> dict[str, Any]:
            return {"requests": self.requests, "polls": self.polls}

        return app


def seconds(wait: float) -> int:
    """A wait as the whole seconds a provider would name (at least 1)."""
    return max(1, math.ceil(wait))
