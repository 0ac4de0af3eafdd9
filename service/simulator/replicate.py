"""The ``replicate`` simulator: Replicate's ``GET /v1/predictions/{id}``, worded as
service/upstreams/replicate.py describes (Replicate's HTTP API and replicate-python):
``starting``, ``processing`` with a progress bar in ``logs``, ``succeeded`` with
``output`` a URL, ``failed`` with ``error`` a string, ``canceled``, ``aborted``; problem
details errors (404, 401 "Unauthenticated", 429 whose ``detail`` says when the limit
resets). Takes ``Authorization: Bearer`` or the older ``Token`` scheme."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from service.simulator.clock import SimTask
from service.simulator.stage import Stage, seconds

WORDS = {"queued": "starting", "in_progress": "processing", "completed": "succeeded",
         "failed": "failed", "cancelled": "canceled", "timed_out": "canceled"}  # fmt: skip


def problem(status_code: int, detail: str, title: str | None = None) -> Response:
    """A Replicate problem details answer."""
    body: dict[str, Any] = {"detail": detail, "status": status_code}
    if title:
        body = {"title": title, **body}
    return JSONResponse(body, status_code=status_code)


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Replicate(Stage):
    """Replicate's predictions."""

    name = "replicate"
    route = "/v1/predictions/{task_id}"

    def new_id(self) -> str:
        return "".join(self.rng.choice("0123456789abcdefghjkmnpqrstvwxyz") for _ in range(26))

    def authorised(self, request: Request) -> bool:
        given = request.headers.get("authorization")
        return self.api_key is None or given in (f"Bearer {self.api_key}", f"Token {self.api_key}")

    def render(self, task: SimTask, now: float, base_url: str) -> Any:
        phase, progress = task.phase(now)
        started = task.created + task.queued if phase != "queued" else None
        ended = phase not in ("queued", "in_progress")
        body: dict[str, Any] = {
            "id": task.id, "model": task.model, "version": "hidden",
            "input": {"prompt": task.prompt}, "logs": "", "output": None,
            "data_removed": False, "error": None,
            "status": task.word(phase, WORDS.get(phase, phase)),
            "created_at": _iso(task.created), "started_at": _iso(started),
            "completed_at": _iso(task.created + task.queued + task.duration) if ended else None,
            "urls": {"get": f"{base_url}v1/predictions/{task.id}",
                     "cancel": f"{base_url}v1/predictions/{task.id}/cancel"},
            "metrics": {},
        }  # fmt: skip
        if phase != "queued":
            bar = "█" * (progress // 10)
            body["logs"] = f"Using seed: 7\n{progress:3d}%|{bar:<10}| {progress // 2}/50\n"
        if phase == "completed":
            body["output"] = None if task.no_video else f"https://replicate.example/{task.id}.mp4"
            body["metrics"] = {"predict_time": task.duration}
        elif phase == "failed":
            body["error"] = "CUDA out of memory"
        return body

    def refused(self) -> Response:
        return problem(401, "You did not pass a valid authentication token", "Unauthenticated")

    def missing(self) -> Response:
        return problem(404, "Not found.")

    def limited(self, wait: float) -> Response:
        detail = f"Request was throttled. Your rate limit resets in ~{seconds(wait)}s."
        answer = problem(429, detail)
        answer.headers.update(self.retry_after())
        return answer

    def unavailable(self) -> Response:
        return problem(503, "Service temporarily unavailable.", "Service Unavailable")

    def bad_request(self) -> Response:
        return problem(400, "Invalid request.", "Bad Request")

    def forbidden(self) -> Response:
        return problem(403, "You do not have permission to perform this action.", "Forbidden")
