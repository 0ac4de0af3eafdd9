"""A simulated OpenAI-style video upstream that plays a real new-api gateway.

Two profiles (``Simulator(profile=…)``, ``status-proxy simulate-upstream --profile``):

- ``octopusx`` (the default): octopusx.ai's customised new-api. Ids ``video_<uuid>``, a
  top-level ``video_url``, words ``queued``/``in_progress``/``completed``/``failed``,
  live progress; ``/content`` honours ``Range`` (206/416) and answers 404 until done.
- ``new-api``: vanilla new-api (service/gateways.py has its words). Ids ``task_`` + 32
  characters; answers read from its own database, refreshed every ``refresh`` seconds
  (``unknown`` before the first refresh); coarse progress; the link in
  ``metadata.url`` (Doubao, Ali) or none (Sora); new-api's error bodies (401, 403 model
  limit, 400 ``task_not_exist``, 501 ``not_implemented`` …); ``/content`` answers 400
  while not completed and 404 for an unknown task, and ignores ``Range`` (always 200
  with the whole file); a create refused with 429 is the saturation answer, with no
  ``Retry-After``.

Per task (``POST /_sim/tasks``, ``TaskSpec``) and for all requests (``POST /_sim/faults``,
``Faults``), tests turn the knobs that replay each answer of ../shared/UPSTREAM.md:

- per task: ``model``/``family`` (doubao, sora, ali), ``view`` (video, flat, wrapped),
  ``outcome`` (completed, failed, timed_out), ``no_video`` (the link field stays ""),
  ``error`` (hidden: 403 model limit; not_implemented: 501; invalid_channel_id: 400;
  convert_to_openai_video_failed: 500; get_task_failed: a passing 500) for
  ``error_for`` seconds or always, ``invisible_for`` (400 task_not_exist at first);
- for all status requests: ``rate_limit``/``retry_after`` (429), ``server_error`` (503),
  ``bad_request`` (400), ``forbidden`` (403 for every task: the key), ``not_video`` with
  ``not_video_body`` (a 200 error envelope, HTML page, ``[]`` or ``null``), ``encoding``
  (a byte-order mark, UTF-16, Latin-1, a lone surrogate escape), ``latency``;
- creates: ``create_status`` for the first ``create_failures`` creates (new-api's 429 is
  its saturation answer, no Retry-After), ``create_latency``;
- ``/content``: ``content_status`` 403 (new-api's URL block, a text body) or 502 (an
  expired provider link); in the new-api profile, 400 while not completed, 404 for an
  unknown task, ``Range`` ignored.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from service import gateways

Profile = Literal["octopusx", "new-api"]
View = Literal["video", "flat", "wrapped"]
TaskError = Literal[
    "hidden", "not_implemented", "invalid_channel_id", "convert_to_openai_video_failed",
    "get_task_failed",
]  # fmt: skip
Encoding = Literal["utf-8", "bom", "utf-16", "latin-1", "lone-surrogate"]

NOT_EXIST = gateways.NOT_EXIST
# Video bytes: a pattern with a prime period, so any range can be made and checked.
PATTERN = bytes((i * 31 + 7) % 251 for i in range(251))
CHUNK = 64 * 1024


def video_bytes(offset: int, length: int) -> bytes:
    """Bytes ``offset`` to ``offset + length`` of every simulated video."""
    start = offset % len(PATTERN)
    repeated = PATTERN * ((start + length) // len(PATTERN) + 1)
    return repeated[start : start + length]


def byte_range(header: str | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """(first, last) of a single ``bytes=`` range; None for the whole; False if unsatisfiable."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:  # the last N bytes
            count = int(last)
            return (max(0, size - count), size - 1) if count > 0 and size else False
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (start, end) if start <= end and start < size else False


async def _client_left(_request: Request, _exc: Exception) -> Response:
    """A client that left mid-upload (status-proxy aborts uploads on purpose: its own
    client left, or the body passed the limit). Nobody reads this answer; it is the
    access log's line, not an error with a traceback."""
    return Response(status_code=400)


BAD_REQUEST = {"code": "invalid_request", "message": "model is busy", "data": None}


@dataclass(slots=True)
class SimTask:
    """One simulated generation: queued, then processing, then its outcome."""

    id: str
    model: str
    prompt: str
    seconds: str
    size: str
    created: float
    queued: float
    duration: float
    outcome: str  # completed | failed
    invisible_for: float = 0.0
    words: dict[str, str] = field(default_factory=dict)  # phase -> status word
    empty_fields: bool = False
    no_video: bool = False
    starts_when_polled: bool = False  # its clock starts at the first poll, not at creation
    content_size: int = 256 * 1024
    family: gateways.Family = "doubao"
    view: View = "video"
    error: TaskError | None = None
    error_for: float | None = None
    refresh: float = 0.0

    def failing(self, now: float) -> bool:
        """Whether the task's chosen error is answered now instead of the task."""
        if self.error is None:
            return False
        return self.error_for is None or now - self.created < self.error_for

    def observed(self, now: float) -> tuple[str, float]:
        """new-api's stored view: the phase at its last refresh (``unknown`` before the
        first one) and the time of that refresh."""
        if self.refresh <= 0:
            return self.phase(now)[0], now
        elapsed = now - self.created
        if elapsed < self.refresh:
            return "unknown", self.created
        seen = self.created + elapsed // self.refresh * self.refresh
        return self.phase(seen)[0], seen

    def newapi(self, now: float, base_url: str) -> Any:
        """This task as vanilla new-api answers ``GET /v1/videos/{id}``."""
        phase, seen = self.observed(now)
        link = "" if self.no_video else f"https://ark.example/{self.id}.mp4?X-Tos-Expires=86400"
        created, updated = int(self.created), int(seen)
        if self.view == "flat":
            return gateways.flat(self.id, phase, created, updated)
        if self.view == "wrapped":
            return gateways.wrapped(self.id, phase, created, updated, link)
        return gateways.video(self.family, self.id, self.model, phase, created, updated, link)

    encoding: str = "utf-8"  # of its status answers (a codec name); see Simulator.encoded

    def phase(self, now: float) -> tuple[str, int]:
        elapsed = now - self.created
        if elapsed < self.queued:
            return "queued", 0
        running = elapsed - self.queued
        if running < self.duration:
            return "in_progress", min(99, int(100 * running / self.duration))
        return self.outcome, 100

    def video(self, now: float, base_url: str) -> dict[str, Any]:
        phase, progress = self.phase(now)
        body: dict[str, Any] = {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": self.words.get(phase, phase),
            "progress": progress,
            "created_at": int(self.created),
            "seconds": self.seconds,
            "size": self.size,
        }
        if self.empty_fields or self.no_video:
            body.update(video_url="", completed_at=0, error={"message": "", "code": ""})
        if phase == "completed":
            body["completed_at"] = int(self.created + self.queued + self.duration)
            if not self.no_video:
                body["video_url"] = f"{base_url}v1/videos/{self.id}/content"
        elif phase in ("failed", "timed_out"):
            body["status"] = self.words.get("failed", "failed")
            if phase == "failed":
                body["error"] = {"code": "generation_failed", "message": "the model gave up"}
        return body


class TaskSpec(BaseModel):
    """Body of ``POST /_sim/tasks``: a task with chosen behaviour."""

    id: str | None = None
    model: str | None = None
    duration: float = 5.0
    queued: float = 0.5
    # completed | failed | timed_out (new-api's own 24 h give-up: failed, no error object)
    outcome: str = "completed"
    invisible_for: float = 0.0  # answered "no such task" this long after creation
    words: dict[str, str] = Field(default_factory=dict)  # octopusx: phase -> status word
    empty_fields: bool = False  # octopusx's placeholders while running: "", 0, empty error
    no_video: bool = False  # the link field stays empty ("") even once completed
    starts_when_polled: bool = False
    content_size: int = 256 * 1024  # bytes served by /content once completed
    # new-api only: its family (by model name when unset), which view GET answers,
    # and an error answered instead of the task (for error_for seconds, or always).
    family: gateways.Family | None = None
    view: View = "video"
    error: TaskError | None = None
    error_for: float | None = None
    encoding: str = "utf-8"  # of its status answers ("utf-16": valid JSON, not UTF-8)


@dataclass(slots=True)
class Created:
    """What one ``POST /v1/videos`` brought: its form or JSON fields, and its files."""

    kind: str  # json | multipart
    fields: dict[str, Any]
    files: dict[str, tuple[str | None, str | None, bytes]]  # name -> (filename, type, bytes)


class Faults(BaseModel):
    """Body of ``POST /_sim/faults``: what share of requests fail, and how."""

    rate_limit: float = 0.0  # share answered 429
    retry_after: str | None = None
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


class Simulator:
    """In-memory upstream state, plus the knobs tests turn."""

    def __init__(
        self,
        api_key: str | None = None,
        duration: float = 20.0,
        fail_rate: float = 0.0,
        profile: Profile = "octopusx",
        refresh: float = 2.0,
    ) -> None:
        self.api_key = api_key
        self.duration = duration
        self.fail_rate = fail_rate
        self.profile = profile
        self.refresh = refresh  # new-api: seconds between its refreshes of a task
        self.tasks: dict[str, SimTask] = {}
        self.faults = Faults()
        self.polls: dict[str, int] = {}
        self.requests = 0
        self.rng = random.Random()
        self.created: list[Created] = []
        self.downloads = {"started": 0, "finished": 0, "aborted": 0}

    def add(self, spec: TaskSpec, **fields: str) -> SimTask:
        newapi = self.profile == "new-api"
        default_id = f"task_{uuid.uuid4().hex}" if newapi else f"video_{uuid.uuid4()}"
        model = spec.model or fields.get("model", "doubao-seedance-1-0-pro-250528")
        task = SimTask(
            id=spec.id or default_id,
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
            family=spec.family or gateways.family_of(model),
            view=spec.view,
            error=spec.error,
            error_for=spec.error_for,
            refresh=self.refresh if newapi else 0.0,
            encoding=spec.encoding,
        )
        self.tasks[task.id] = task
        return task

    def answer(self, task: SimTask, now: float, base_url: str) -> Any:
        """A task as this profile answers ``GET /v1/videos/{id}``."""
        if self.profile == "new-api":
            return task.newapi(now, base_url)
        return task.video(now, base_url)

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

    def _refused(self) -> JSONResponse:
        if self.profile == "new-api":
            return JSONResponse(gateways.INVALID_TOKEN, status_code=401)
        return JSONResponse({"error": {"message": "invalid token"}}, status_code=401)

    async def _stream(self, first: int, last: int) -> AsyncIterator[bytes]:
        self.downloads["started"] += 1
        finished = False
        try:
            offset = first
            while offset <= last:
                length = min(CHUNK, last - offset + 1)
                yield video_bytes(offset, length)
                offset += length
                await asyncio.sleep(0)
            finished = True
        finally:
            self.downloads["finished" if finished else "aborted"] += 1

    def _authorised(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def create_app(self) -> FastAPI:
        app = FastAPI(title="status-proxy upstream simulator")
        app.state.simulator = self
        app.add_exception_handler(ClientDisconnect, _client_left)

        @app.post("/v1/videos")
        async def create_video(request: Request) -> JSONResponse:
            if not self._authorised(request):
                return self._refused()
            if self.faults.create_latency:
                await asyncio.sleep(self.faults.create_latency)
            record = await _intake(request)
            self.created.append(record)
            refusal = self._create_refusal()
            if refusal is not None:
                return refusal
            fields = {k: str(v) for k, v in record.fields.items()}
            outcome = "failed" if self.rng.random() < self.fail_rate else "completed"
            task = self.add(TaskSpec(duration=self.duration, outcome=outcome), **fields)
            now = time.time()
            if self.profile == "new-api":
                return JSONResponse(gateways.created(task.id, task.model, int(now)))
            return JSONResponse(task.video(now, str(request.base_url)))

        @app.get("/v1/videos/{task_id}/content", response_model=None)
        async def content(task_id: str, request: Request) -> Response:
            if not self._authorised(request):
                return self._refused()
            if self.faults.content_status == 403:  # new-api's own guard, not the key
                return PlainTextResponse(gateways.CONTENT_BLOCKED, status_code=403)
            if self.faults.content_status == 502:
                return JSONResponse(gateways.CONTENT_EXPIRED, status_code=502)
            task = self.tasks.get(task_id)
            if self.profile == "new-api":
                return self._newapi_content(task)
            if task is None or task.phase(time.time())[0] != "completed":
                return JSONResponse({"error": {"message": "video not ready"}}, status_code=404)
            size = task.content_size
            wanted = byte_range(request.headers.get("range"), size)
            if wanted is False:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            first, last = wanted if wanted else (0, size - 1)
            headers = {"Accept-Ranges": "bytes", "Content-Length": str(last - first + 1)}
            if wanted:
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            return StreamingResponse(
                self._stream(first, last), 206 if wanted else 200, headers, "video/mp4"
            )

        @app.get("/v1/videos/{task_id}")
        async def get_video(task_id: str, request: Request) -> Response:
            return await self._status(task_id, request, wrapped=False)

        @app.get("/v1/video/generations/{task_id}")
        async def get_generation(task_id: str, request: Request) -> Response:
            return await self._status(task_id, request, wrapped=True)

        @app.post("/_sim/tasks")
        async def add_task(spec: TaskSpec, request: Request) -> Any:
            return self.answer(self.add(spec), time.time(), str(request.base_url))

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

        add_library_routes(app, self)
        return app

    def _create_refusal(self) -> JSONResponse | None:
        """The chosen create error, while ``create_failures`` lasts; new-api's 429 is its
        saturation answer with no Retry-After."""
        faults = self.faults
        if faults.create_status is None:
            return None
        if faults.create_failures is not None:
            if faults.create_failures <= 0:
                return None
            faults.create_failures -= 1
        if self.profile == "new-api" and faults.create_status == 429:
            return JSONResponse(gateways.SATURATED, status_code=429)
        error = {"error": {"message": "invalid model", "type": "invalid_request_error"}}
        return JSONResponse(error, status_code=faults.create_status)

    async def _status(self, task_id: str, request: Request, wrapped: bool) -> Response:
        """``GET /v1/videos/{id}`` (or new-api's wrapped task route), faults first."""
        self.requests += 1
        self.polls[task_id] = self.polls.get(task_id, 0) + 1
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        if not self._authorised(request):
            return self._refused()
        fault = self._fault()
        if fault is not None:
            return fault
        task = self.tasks.get(task_id)
        now = time.time()
        if task is not None and task.starts_when_polled:
            task.created, task.starts_when_polled = now, False
        if task is None or now - task.created < task.invisible_for:
            if self.faults.not_found_status == 404:
                return JSONResponse({"error": {"message": "not found"}}, status_code=404)
            return JSONResponse(NOT_EXIST, status_code=400)
        if task.failing(now):
            assert task.error is not None
            status_code, body = gateways.TASK_ERRORS[task.error]
            return JSONResponse(body, status_code=status_code)
        if wrapped:
            phase, seen = task.observed(now)
            link = "" if task.no_video else f"{request.base_url}v1/videos/{task.id}/content"
            body = gateways.wrapped(task.id, phase, int(task.created), int(seen), link)
            return self.encoded(body)
        return self.encoded(self.answer(task, now, str(request.base_url)), encoding=task.encoding)

    def _fault(self) -> Response | None:
        """A request-wide fault, drawn by share: 429, 503, 400, 403, or a 200 non-video."""
        faults = self.faults
        roll = self.rng.random()
        if roll < faults.rate_limit:
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            return JSONResponse({"error": {"message": "too many"}}, 429, headers=headers)
        roll -= faults.rate_limit
        if roll < faults.server_error:
            return JSONResponse({"error": {"message": "try later"}}, status_code=503)
        roll -= faults.server_error
        if roll < faults.bad_request:
            return JSONResponse(BAD_REQUEST, status_code=400)
        roll -= faults.bad_request
        if roll < faults.forbidden:
            return JSONResponse(gateways.MODEL_LIMIT, status_code=403)
        roll -= faults.forbidden
        if roll < faults.not_video:
            if faults.not_video_body == "html":
                return Response(gateways.HTML_PAGE, 200, media_type="text/html")
            return self.encoded(gateways.NOT_VIDEO[faults.not_video_body])
        return None

    def _newapi_content(self, task: SimTask | None) -> Response:
        """new-api's ``/content``: proxied whole whatever ``Range`` asks (no 206, no 416),
        400 while not completed, 404 for an unknown task."""
        if task is None:
            return JSONResponse(gateways.CONTENT_NOT_FOUND, status_code=404)
        phase, _ = task.observed(time.time())
        if phase != "completed":
            word = gateways.TASK_WORDS[phase]
            return JSONResponse(gateways.content_not_ready(word), status_code=400)
        size = task.content_size
        headers = {"Content-Length": str(size)}
        return StreamingResponse(self._stream(0, size - 1), 200, headers, "video/mp4")


async def _intake(request: Request) -> Created:
    """What a create brought, JSON or multipart."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        record = Created("multipart", {}, {})
        async with request.form(max_part_size=64 * 1024 * 1024) as form:
            for name, value in form.multi_items():
                if isinstance(value, str):
                    record.fields[name] = value
                else:
                    data = await value.read()
                    record.files[name] = (value.filename, value.content_type, data)
        return record
    payload = await request.json()
    return Created("json", payload if isinstance(payload, dict) else {}, {})


def add_library_routes(app: FastAPI, sim: Simulator) -> None:
    """The rest of the OpenAI video library: list, remix and delete, as OpenAI answers
    them (new-api gateways have remix for Sora-style models, and neither list nor delete)."""
    remixed: dict[str, str] = {}  # new task -> the task it was made from

    def refused(request: Request) -> JSONResponse | None:
        if sim._authorised(request):
            return None
        return JSONResponse({"error": {"message": "invalid token"}}, status_code=401)

    def missing() -> JSONResponse:
        error = {"message": "Video not found", "type": "invalid_request_error"}
        return JSONResponse({"error": error}, status_code=404)

    def shown(task: SimTask, request: Request) -> dict[str, Any]:
        video = task.video(time.time(), str(request.base_url))
        if task.id in remixed:
            video["remixed_from_video_id"] = remixed[task.id]
        return video

    @app.get("/v1/videos")
    async def list_videos(request: Request, limit: int = 20, after: str | None = None) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        tasks = sorted(sim.tasks.values(), key=lambda task: task.created, reverse=True)
        if after is not None:
            ids = [task.id for task in tasks]
            tasks = tasks[ids.index(after) + 1 :] if after in ids else []
        page = [shown(task, request) for task in tasks[:limit]]
        return JSONResponse(
            {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
             "last_id": page[-1]["id"] if page else None, "has_more": len(tasks) > limit}
        )  # fmt: skip

    @app.post("/v1/videos/{task_id}/remix")
    async def remix(task_id: str, request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        source = sim.tasks.get(task_id)
        if source is None:
            return missing()
        payload = await request.json()
        fields = payload if isinstance(payload, dict) else {}
        sim.created.append(Created("json", dict(fields), {}))
        spec = TaskSpec(duration=sim.duration)
        task = sim.add(
            spec, model=source.model, prompt=str(fields.get("prompt", "")),
            seconds=source.seconds, size=source.size,
        )  # fmt: skip
        remixed[task.id] = source.id
        return JSONResponse(shown(task, request))

    @app.delete("/v1/videos/{task_id}")
    async def delete(task_id: str, request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        if sim.tasks.pop(task_id, None) is None:
            return missing()
        return JSONResponse({"id": task_id, "object": "video.deleted", "deleted": True})
