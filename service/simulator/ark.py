"""The ``ark`` simulator: Volcengine Ark's ``GET /api/v3/contents/generations/tasks/{id}``,
worded as service/upstreams/ark.py describes (Ark's API reference and its common error
codes): ``queued``, ``running``, ``succeeded`` with ``content.video_url``, ``failed``
with ``error``, ``cancelled``, ``expired``; no progress; ``{"error":{"code","message",
"param","type"}}`` errors (404 not found, 401 ``AuthenticationError``, 403
``AccessDenied``, 429 ``RateLimitExceeded.EndpointRPMExceeded`` without ``Retry-After``
unless a test asks for one)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse, Response

from service.simulator.clock import SimTask
from service.simulator.stage import Stage

WORDS = {"queued": "queued", "in_progress": "running", "completed": "succeeded",
         "failed": "failed", "timed_out": "expired"}  # fmt: skip
SENSITIVE = {
    "code": "InputTextSensitiveContentDetected",
    "message": "The request failed because the input text may contain sensitive information.",
}


def error(status_code: int, kind: str, code: str, message: str, param: str = "") -> Response:
    """An Ark error answer."""
    body = {"code": code, "message": f"{message} Request id: sim", "param": param, "type": kind}
    return JSONResponse({"error": body}, status_code=status_code)


class Ark(Stage):
    """Volcengine Ark's video generation tasks."""

    name = "ark"
    route = "/api/v3/contents/generations/tasks/{task_id}"

    def new_id(self) -> str:
        return f"cgt-20260101{self.rng.randrange(10**6):06d}-{self.rng.randrange(36**5):05x}"

    def render(self, task: SimTask, now: float, base_url: str) -> Any:
        phase, _ = task.phase(now)
        body: dict[str, Any] = {
            "id": task.id,
            "model": task.model,
            "status": task.word(phase, WORDS.get(phase, phase)),
            "created_at": int(task.created),
            "updated_at": int(now),
        }
        if phase == "completed":
            link = "" if task.no_video else f"https://ark.example/{task.id}.mp4?X-Tos-Expires=86400"
            body.update(
                content={"video_url": link}, seed=10, resolution="720p", ratio="16:9",
                duration=int(float(task.seconds)), framespersecond=24,
                usage={"completion_tokens": 108900, "total_tokens": 108900},
            )  # fmt: skip
        elif phase == "failed":
            body["error"] = SENSITIVE
        return body

    def refused(self) -> Response:
        return error(401, "Unauthorized", "AuthenticationError",
                     "The API key or AK/SK in the request is missing or invalid.")  # fmt: skip

    def missing(self) -> Response:
        return error(404, "NotFound", "ResourceNotFound", "The specified task is not found.", "id")

    def limited(self, wait: float) -> Response:
        message = ("The Requests Per Minute (RPM) limit of the associated endpoint for your "
                   "account has been exceeded.")  # fmt: skip
        answer = error(429, "TooManyRequests", "RateLimitExceeded.EndpointRPMExceeded", message)
        answer.headers.update(self.retry_after())
        return answer

    def unavailable(self) -> Response:
        return error(503, "ServiceUnavailable", "ServerOverloaded",
                     "The service is currently unable to handle additional requests.")  # fmt: skip

    def bad_request(self) -> Response:
        return error(400, "BadRequest", "InvalidParameter",
                     "One or more parameters specified in the request are not valid.")  # fmt: skip

    def forbidden(self) -> Response:
        message = "The request failed because you do not have access to the requested resource."
        return error(403, "Forbidden", "AccessDenied", message)
