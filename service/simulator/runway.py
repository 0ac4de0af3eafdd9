"""The ``runway`` simulator: Runway's ``GET /v1/tasks/{id}``, worded as
service/upstreams/runway.py describes (Runway's API reference and runwayml/sdk-python):
``PENDING`` (``THROTTLED`` when a test names it), ``RUNNING`` with ``progress`` a
fraction, ``SUCCEEDED`` with ``output`` a list of URLs, ``FAILED`` with ``failure`` and
``failureCode``, ``CANCELLED``; ``{"error": "…"}`` errors (404, 401, 429); a request
without ``X-Runway-Version: 2024-11-06`` is refused with 400."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from service.simulator.clock import SimTask
from service.simulator.stage import Stage
from service.upstreams.runway import VERSION

WORDS = {"queued": "PENDING", "in_progress": "RUNNING", "completed": "SUCCEEDED",
         "failed": "FAILED", "cancelled": "CANCELLED", "timed_out": "FAILED"}  # fmt: skip


def error(status_code: int, message: str) -> Response:
    """A Runway error answer."""
    return JSONResponse({"error": message}, status_code=status_code)


class Runway(Stage):
    """Runway's tasks."""

    name = "runway"
    route = "/v1/tasks/{task_id}"

    def render(self, task: SimTask, now: float, base_url: str) -> Any:
        phase, progress = task.phase(now)
        created = datetime.fromtimestamp(task.created, UTC).isoformat(timespec="milliseconds")
        body: dict[str, Any] = {
            "id": task.id,
            "createdAt": created.replace("+00:00", "Z"),
            "status": task.word(phase, WORDS.get(phase, phase)),
        }
        if phase == "in_progress":
            body["progress"] = progress / 100
        elif phase == "completed":
            body["output"] = [] if task.no_video else [f"https://runway.example/{task.id}.mp4"]
        elif phase == "failed":
            body.update(failure="The prompt was flagged by moderation.",
                        failureCode="SAFETY.INPUT.TEXT")  # fmt: skip
        return body

    def rejected(self, request: Request) -> Response | None:
        if request.headers.get("x-runway-version") != VERSION:
            return error(400, "The X-Runway-Version header is missing or not a known version.")
        return None

    def refused(self) -> Response:
        return error(401, "The provided API key is not valid.")

    def missing(self) -> Response:
        return error(404, "Task not found.")

    def limited(self, wait: float) -> Response:
        answer = error(429, "You have exceeded the rate limit for this endpoint.")
        answer.headers.update(self.retry_after())
        return answer

    def unavailable(self) -> Response:
        return error(503, "Runway is shedding load; try again later.")

    def bad_request(self) -> Response:
        return error(400, "Invalid request.")

    def forbidden(self) -> Response:
        return error(403, "This API key cannot read this task.")
