"""A simulated OpenAI-style video upstream that behaves like a new-api gateway."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

NOT_EXIST = {"code": "task_not_exist", "message": "task_not_exist", "data": None}
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
        if self.empty_fields:
            body.update(video_url="", completed_at=0, error={"message": "", "code": ""})
        if phase == "completed":
            body["completed_at"] = int(self.created + self.queued + self.duration)
            if not self.no_video:
                body["video_url"] = f"{base_url}v1/videos/{self.id}/content"
        elif phase == "failed":
            body["error"] = {"code": "generation_failed", "message": "the model gave up"}
        return body


class TaskSpec(BaseModel):
    """Body of ``POST /_sim/tasks``: a task with chosen behaviour."""

    id: str | None = None
    duration: float = 5.0
    queued: float = 0.5
    outcome: str = "completed"
    invisible_for: float = 0.0
    words: dict[str, str] = Field(default_factory=dict)
    empty_fields: bool = False
    no_video: bool = False
    starts_when_polled: bool = False
    content_size: int = 256 * 1024  # bytes served by /content once completed


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
    create_latency: float = 0.0  # seconds added to every create


class Simulator:
    """In-memory upstream state, plus the knobs tests turn."""

    def __init__(
        self, api_key: str | None = None, duration: float = 20.0, fail_rate: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.duration = duration
        self.fail_rate = fail_rate
        self.tasks: dict[str, SimTask] = {}
        self.faults = Faults()
        self.polls: dict[str, int] = {}
        self.requests = 0
        self.rng = random.Random()
        self.created: list[Created] = []
        self.downloads = {"started": 0, "finished": 0, "aborted": 0}

    def add(self, spec: TaskSpec, **fields: str) -> SimTask:
        task = SimTask(
            id=spec.id or f"video_{uuid.uuid4()}",
            model=fields.get("model", "doubao-seedance-1-0-pro"),
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
        )
        self.tasks[task.id] = task
        return task

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
                return JSONResponse({"error": {"message": "invalid token"}}, status_code=401)
            if self.faults.create_latency:
                await asyncio.sleep(self.faults.create_latency)
            if request.headers.get("content-type", "").startswith("multipart/"):
                record = Created("multipart", {}, {})
                async with request.form(max_part_size=64 * 1024 * 1024) as form:
                    for name, value in form.multi_items():
                        if isinstance(value, str):
                            record.fields[name] = value
                        else:
                            data = await value.read()
                            record.files[name] = (value.filename, value.content_type, data)
            else:
                payload = await request.json()
                record = Created("json", payload if isinstance(payload, dict) else {}, {})
            self.created.append(record)
            if self.faults.create_status is not None:
                error = {"error": {"message": "invalid model", "type": "invalid_request_error"}}
                return JSONResponse(error, status_code=self.faults.create_status)
            fields = {k: str(v) for k, v in record.fields.items()}
            outcome = "failed" if self.rng.random() < self.fail_rate else "completed"
            task = self.add(TaskSpec(duration=self.duration, outcome=outcome), **fields)
            return JSONResponse(task.video(time.time(), str(request.base_url)))

        @app.get("/v1/videos/{task_id}/content", response_model=None)
        async def content(task_id: str, request: Request) -> Response:
            if not self._authorised(request):
                return JSONResponse({"error": {"message": "invalid token"}}, status_code=401)
            task = self.tasks.get(task_id)
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
        async def get_video(task_id: str, request: Request) -> JSONResponse:
            self.requests += 1
            self.polls[task_id] = self.polls.get(task_id, 0) + 1
            if self.faults.latency:
                await asyncio.sleep(self.faults.latency)
            if not self._authorised(request):
                return JSONResponse({"error": {"message": "invalid token"}}, status_code=401)
            roll = self.rng.random()
            if roll < self.faults.rate_limit:
                headers = (
                    {"Retry-After": self.faults.retry_after} if self.faults.retry_after else {}
                )
                return JSONResponse({"error": {"message": "too many"}}, 429, headers=headers)
            roll -= self.faults.rate_limit
            if roll < self.faults.server_error:
                return JSONResponse({"error": {"message": "try later"}}, status_code=503)
            if roll - self.faults.server_error < self.faults.bad_request:
                return JSONResponse(BAD_REQUEST, status_code=400)
            task = self.tasks.get(task_id)
            now = time.time()
            if task is not None and task.starts_when_polled:
                task.created, task.starts_when_polled = now, False
            if task is None or now - task.created < task.invisible_for:
                if self.faults.not_found_status == 404:
                    return JSONResponse({"error": {"message": "not found"}}, status_code=404)
                return JSONResponse(NOT_EXIST, status_code=400)
            return JSONResponse(task.video(now, str(request.base_url)))

        @app.post("/_sim/tasks")
        async def add_task(spec: TaskSpec, request: Request) -> dict[str, Any]:
            return self.add(spec).video(time.time(), str(request.base_url))

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
