"""The ``openai-video`` simulator: an OpenAI-style video upstream that plays a real
new-api gateway (and its ``/v1/video/generations/{id}`` route: the ``new-api-task``
family).

Two profiles (``Simulator(profile=…)``, ``status-proxy simulate-upstream --profile``):

- ``octopusx`` (the default): octopusx.ai's customised new-api. Ids ``video_<uuid>``, a
  top-level ``video_url``, words ``queued``/``in_progress``/``completed``/``failed``,
  live progress; ``/content`` honours ``Range`` (206/416) and answers 404 until done.
- ``new-api``: vanilla new-api (service/simulator/new_api.py has its words). Ids ``task_`` + 32
  characters; answers read from its own database, refreshed every ``refresh`` seconds
  (``unknown`` before the first refresh); coarse progress; the link in
  ``metadata.url`` (Doubao, Ali) or none (Sora); new-api's error bodies (401, 403 model
  limit, 400 ``task_not_exist``, 501 ``not_implemented`` …); ``/content`` answers 400
  while not completed and 404 for an unknown task, and ignores ``Range`` (always 200
  with the whole file); a create refused with 429 is the saturation answer, with no
  ``Retry-After``.

Per task (``POST /_sim/tasks``, ``TaskSpec``) and for all requests (``POST /_sim/faults``,
``Faults``; service/simulator/stage.py), tests turn the knobs that replay each answer
of ../shared/UPSTREAM.md:

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
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from service.simulator import new_api
from service.simulator.clock import SimTask, TaskSpec
from service.simulator.stage import Stage

Profile = Literal["octopusx", "new-api"]
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


@dataclass(slots=True)
class Created:
    """What one ``POST /v1/videos`` brought: its form or JSON fields, and its files."""

    kind: str  # json | multipart
    fields: dict[str, Any]
    files: dict[str, tuple[str | None, str | None, bytes]]  # name -> (filename, type, bytes)


class Simulator(Stage):
    """A new-api gateway (octopusx's or vanilla), with the knobs tests turn."""

    name = "openai-video"
    route = "/v1/videos/{task_id}"

    def __init__(
        self,
        api_key: str | None = None,
        duration: float = 20.0,
        fail_rate: float = 0.0,
        profile: Profile = "octopusx",
        refresh: float = 2.0,
    ) -> None:
        super().__init__(api_key, duration)
        self.fail_rate = fail_rate
        self.profile = profile
        self.refresh = refresh  # new-api: seconds between its refreshes of a task
        self.created: list[Created] = []
        self.downloads = {"started": 0, "finished": 0, "aborted": 0}

    def new_id(self) -> str:
        newapi = self.profile == "new-api"
        return f"task_{uuid.uuid4().hex}" if newapi else f"video_{uuid.uuid4()}"

    def task_refresh(self) -> float:
        return self.refresh if self.profile == "new-api" else 0.0

    def render(self, task: SimTask, now: float, base_url: str) -> Any:
        """A task as this profile answers ``GET /v1/videos/{id}``."""
        if self.profile == "new-api":
            return newapi_video(task, now)
        return octopusx_video(task, now, base_url)

    def render_as(self, view: str, task: SimTask, now: float, base_url: str) -> Any:
        if view != "generations":
            return self.render(task, now, base_url)
        phase, seen = task.observed(now)
        link = "" if task.no_video else f"{base_url}v1/videos/{task.id}/content"
        return new_api.wrapped(task.id, phase, int(task.created), int(seen), link)

    def task_error(self, task: SimTask) -> Response:
        assert task.error is not None
        status_code, body = new_api.TASK_ERRORS[task.error]
        return JSONResponse(body, status_code=status_code)

    def refused(self) -> Response:
        if self.profile == "new-api":
            return JSONResponse(new_api.INVALID_TOKEN, status_code=401)
        return super().refused()

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

    def routes(self, app: FastAPI) -> None:
        app.add_exception_handler(ClientDisconnect, _client_left)

        @app.post("/v1/videos")
        async def create_video(request: Request) -> Response:
            if not self.authorised(request):
                return self.refused()
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
                return JSONResponse(new_api.created(task.id, task.model, int(now)))
            return JSONResponse(octopusx_video(task, now, str(request.base_url)))

        @app.get("/v1/videos/{task_id}/content", response_model=None)
        async def content(task_id: str, request: Request) -> Response:
            if not self.authorised(request):
                return self.refused()
            if self.faults.content_status == 403:  # new-api's own guard, not the key
                return PlainTextResponse(new_api.CONTENT_BLOCKED, status_code=403)
            if self.faults.content_status == 502:
                return JSONResponse(new_api.CONTENT_EXPIRED, status_code=502)
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
            return await self.status(task_id, request)

        @app.get("/v1/video/generations/{task_id}")
        async def get_generation(task_id: str, request: Request) -> Response:
            return await self.status(task_id, request, view="generations")

        add_library_routes(app, self)

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
            return JSONResponse(new_api.SATURATED, status_code=429)
        error = {"error": {"message": "invalid model", "type": "invalid_request_error"}}
        return JSONResponse(error, status_code=faults.create_status)

    def _newapi_content(self, task: SimTask | None) -> Response:
        """new-api's ``/content``: proxied whole whatever ``Range`` asks (no 206, no 416),
        400 while not completed, 404 for an unknown task."""
        if task is None:
            return JSONResponse(new_api.CONTENT_NOT_FOUND, status_code=404)
        phase, _ = task.observed(time.time())
        if phase != "completed":
            word = new_api.TASK_WORDS[new_api.known(phase)]
            return JSONResponse(new_api.content_not_ready(word), status_code=400)
        size = task.content_size
        headers = {"Content-Length": str(size)}
        return StreamingResponse(self._stream(0, size - 1), 200, headers, "video/mp4")


def newapi_video(task: SimTask, now: float) -> Any:
    """A task as vanilla new-api answers ``GET /v1/videos/{id}``: its stored view."""
    phase, seen = task.observed(now)
    link = "" if task.no_video else f"https://ark.example/{task.id}.mp4?X-Tos-Expires=86400"
    created, updated = int(task.created), int(seen)
    if task.view == "flat":
        return new_api.flat(task.id, phase, created, updated)
    if task.view == "wrapped":
        return new_api.wrapped(task.id, phase, created, updated, link)
    return new_api.video(task.family, task.id, task.model, phase, created, updated, link)


def octopusx_video(task: SimTask, now: float, base_url: str) -> dict[str, Any]:
    """A task as octopusx's customised new-api answers ``GET /v1/videos/{id}``."""
    phase, progress = task.phase(now)
    body: dict[str, Any] = {
        "id": task.id,
        "object": "video",
        "model": task.model,
        "status": task.word(phase, phase),
        "progress": progress,
        "created_at": int(task.created),
        "seconds": task.seconds,
        "size": task.size,
    }
    if task.empty_fields or task.no_video:
        body.update(video_url="", completed_at=0, error={"message": "", "code": ""})
    if phase == "completed":
        body["completed_at"] = int(task.created + task.queued + task.duration)
        if not task.no_video:
            body["video_url"] = f"{base_url}v1/videos/{task.id}/content"
    elif phase in ("failed", "timed_out"):
        body["status"] = task.word("failed", "failed")
        if phase == "failed":
            body["error"] = {"code": "generation_failed", "message": "the model gave up"}
    return body


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
        if sim.authorised(request):
            return None
        return JSONResponse({"error": {"message": "invalid token"}}, status_code=401)

    def missing() -> JSONResponse:
        error = {"message": "Video not found", "type": "invalid_request_error"}
        return JSONResponse({"error": error}, status_code=404)

    def shown(task: SimTask, request: Request) -> dict[str, Any]:
        video = octopusx_video(task, time.time(), str(request.base_url))
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
