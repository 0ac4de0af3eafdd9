"""How the simulated gateways word their answers: vanilla new-api, as read from its source
(QuantumNous/new-api: relaykit/dto/openai_video.go, relay/relay_task.go, model/task.go,
relay/channel/task/doubao and sora, controller/video_proxy.go) and set out in
../shared/UPSTREAM.md. octopusx's customised new-api is the simulator's own default.

Families of vanilla new-api, chosen by model name unless a task names one:

- ``doubao`` (and Kling, Vidu, Jimeng, Hailuo): the link in ``metadata.url``, ``""`` until
  there is one; progress 0 → 10 → 50 → 100; an ``error`` object on failure.
- ``sora``: the stored OpenAI object, no link at all; a failure is the stored error body
  ``{"error": {…}, "id": …}`` with no ``status``.
- ``ali``: like doubao, but ``"status": "unknown"`` beside a throttling ``error`` while
  the task goes on.

Views of one task (``TaskSpec.view``): ``video`` (the object above), ``flat`` (the task
view of the September 2026 release candidates: ``SUCCESS``, ``"100%"``, ``fail_reason``)
and ``wrapped`` (``{"code":"success","data":{…}}``, as ``/v1/video/generations/{id}``
always answers).
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

Family = Literal["doubao", "sora", "ali"]
# new-api's own answers for a task's phase: (status word, coarse progress).
PHASES: dict[str, tuple[str, int]] = {
    "unknown": ("unknown", 0),
    "queued": ("queued", 10),
    "in_progress": ("in_progress", 50),
    "completed": ("completed", 100),
    "failed": ("failed", 100),
    "timed_out": ("failed", 100),
}
# The words of the flat task view and the wrapper (model/task.go's TaskStatus).
TASK_WORDS = {
    "unknown": "SUBMITTED",
    "queued": "QUEUED",
    "in_progress": "IN_PROGRESS",
    "completed": "SUCCESS",
    "failed": "FAILURE",
    "timed_out": "FAILURE",
}
FAILURE_REASON = "the provider refused the prompt"


def known(phase: str) -> str:
    """new-api has no word of its own for a provider's other ends (cancelled, expired):
    it keeps them as a failure."""
    return phase if phase in TASK_WORDS else "failed"


# The provider's own word for each phase, as new-api keeps its last answer (Doubao: Ark).
ARK_WORDS = {
    "unknown": "queued", "queued": "queued", "in_progress": "running", "completed": "succeeded",
    "failed": "failed", "timed_out": "running",
}  # fmt: skip

# --- errors, as new-api answers them ---------------------------------------------------

NOT_EXIST = {"code": "task_not_exist", "message": "task_not_exist", "data": None}
INVALID_TOKEN = {
    "error": {"message": "Invalid token (request id: sim)", "type": "new_api_error", "code": ""}
}
MODEL_LIMIT = {  # 403: a key limited to some models cannot see this task
    "error": {
        "message": "This token has no access to model  (request id: sim)",
        "type": "new_api_error",
        "code": "",
    }
}
# A task's lasting (or, for get_task_failed, passing) errors: status and body.
TASK_ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "hidden": (403, MODEL_LIMIT),
    "not_implemented": (
        501, {"code": "not_implemented", "message": "not_implemented:doubao", "data": None}
    ),
    "invalid_channel_id": (
        400, {"code": "invalid_channel_id", "message": "invalid channel id", "data": None}
    ),
    "convert_to_openai_video_failed": (
        500,
        {"code": "convert_to_openai_video_failed", "message": "unmarshal failed", "data": None},
    ),
    "get_task_failed": (500, {"code": "get_task_failed", "message": "db timeout", "data": None}),
}  # fmt: skip
# 200 bodies that are not a video: what a proxy or a confused gateway sends.
NOT_VIDEO: dict[str, Any] = {
    "error": {
        "error": {
            "message": "upstream request timed out, please retry",
            "type": "upstream_error",
            "code": "timeout",
        }
    },
    "list": [],
    "null": None,
}
HTML_PAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
SATURATED = {  # 429 on create when every channel is busy: no Retry-After, a retry succeeds
    "code": "fail_to_fetch_task",
    "message": "当前分组上游负载已饱和\uff0c请稍后再试",  # with a full-width comma
    "data": None,
}
CONTENT_NOT_FOUND = {"error": {"message": "Task not found", "type": "invalid_request_error"}}
CONTENT_EXPIRED = {
    "error": {"message": "Upstream service returned status 403", "type": "server_error"}
}
CONTENT_BLOCKED = "request blocked: the address is not allowed"


def content_not_ready(word: str) -> dict[str, Any]:
    """``/content`` of a task that has not completed: new-api's 400."""
    message = f"Task is not completed yet, current status: {word}"
    return {"error": {"message": message, "type": "invalid_request_error"}}


def family_of(model: str) -> Family:
    """The new-api channel family a model goes through."""
    name = model.lower()
    if "sora" in name:
        return "sora"
    if name.startswith(("wan", "ali")):
        return "ali"
    return "doubao"


def video(
    family: Family, task_id: str, model: str, phase: str, created: int, updated: int, link: str
) -> dict[str, Any]:
    """``GET /v1/videos/{id}`` of vanilla new-api: ``phase`` is one of PHASES, ``updated``
    the time of new-api's last refresh, ``link`` the provider's URL (or "")."""
    phase = known(phase)
    word, progress = PHASES[phase]
    if family == "sora":
        return _sora(task_id, model, phase, created, updated)
    body: dict[str, Any] = {
        "id": task_id,
        "task_id": task_id,
        "object": "video",
        "model": model,
        "status": word,
        "progress": progress,
        "created_at": created,
        "completed_at": updated,  # new-api sets it to the last update, even while running
        "metadata": {"url": link if phase == "completed" else ""},
    }
    if phase == "failed":
        body["error"] = {"message": FAILURE_REASON, "code": "InputTextSensitiveContentDetected"}
    if family == "ali" and phase in ("queued", "in_progress"):
        body["status"] = "unknown"  # a throttled provider reply, while the task goes on
        body["error"] = {"message": "Requests rate limit exceeded", "code": "Throttling"}
    return body


def _sora(task_id: str, model: str, phase: str, created: int, updated: int) -> dict[str, Any]:
    if phase == "failed":  # new-api stores the provider's error body and returns it
        error = {
            "message": "Your request was blocked by our moderation system.",
            "type": "invalid_request_error",
            "param": None,
            "code": "moderation_blocked",
        }
        return {"error": error, "id": task_id}
    word, progress = PHASES[phase]
    body: dict[str, Any] = {
        "id": task_id,
        "object": "video",
        "model": model,
        "status": word,
        "progress": progress,
        "created_at": created,
        "seconds": "4",
        "size": "1280x720",
    }
    if phase == "completed":
        body["completed_at"] = updated
    return body


def flat(task_id: str, phase: str, created: int, updated: int) -> dict[str, Any]:
    """The flat task view of new-api's release candidates (new-api issue 7194)."""
    phase = known(phase)
    return {
        "task_id": task_id,
        "status": TASK_WORDS[phase],
        "progress": f"{PHASES[phase][1]}%",
        "fail_reason": FAILURE_REASON if phase == "failed" else "",  # timed_out: none given
        "created_at": created,
        "finished_at": updated if phase in ("completed", "failed", "timed_out") else 0,
        "platform": "1",
    }


def wrapped(task_id: str, phase: str, created: int, updated: int, link: str) -> dict[str, Any]:
    """``GET /v1/video/generations/{id}``: new-api's task row (dto/task.go ``TaskDto``)
    inside its wrapper; ``result_url`` is left out while empty (``omitempty``) and
    ``data`` holds the provider's own last answer."""
    data = flat(task_id, phase, created, updated)
    finished = data.pop("finished_at")
    data.update(
        id=zlib.crc32(task_id.encode()) % 100000, updated_at=updated, user_id=1, group="default",
        channel_id=1, quota=0, action="generate", submit_time=created,
        start_time=created if phase != "unknown" else 0, finish_time=finished,
        properties={}, data={"id": task_id, "status": ARK_WORDS.get(phase, phase)},
    )  # fmt: skip
    if phase == "completed" and link:
        data["result_url"] = link
    return {"code": "success", "message": "", "data": data}


def created(task_id: str, model: str, created_at: int) -> dict[str, Any]:
    """new-api's 200 answer to a create (never 201)."""
    return {
        "id": task_id,
        "task_id": task_id,
        "object": "video",
        "model": model,
        "status": "queued",
        "progress": 0,
        "created_at": created_at,
    }
