"""Provider families: how each asks for a task, and how its answers read, replayed from
answers as the providers document them (see each module's docstring)."""

import asyncio
import json

import httpx
import pytest

from service import upstreams
from service.upstreams import ark, new_api_task, replicate, runway

NEWAPI_ID = "task_Ab3kLm9QxYz0123456789abcdefghijk"
ARK_ID = "cgt-20250331175019-68d9t"
RUNWAY_ID = "17f20503-6c24-4c16-946b-35dbbce2af2f"
REPLICATE_ID = "qz7mfxlkw3vdpygt1o8hbnsuae"
ID = {"new-api-task": NEWAPI_ID, "ark": ARK_ID, "runway": RUNWAY_ID, "replicate": REPLICATE_ID}
ID["openai-video"] = NEWAPI_ID
LINK = (
    "https://ark-content-generation-cn-beijing.tos-cn-beijing.volces.com/x.mp4?X-Tos-Expires=86400"
)


def row(**fields):
    """new-api's task row (dto.TaskDto) of a Doubao task, inside its wrapper."""
    data = {
        "id": 42, "created_at": 1788400000, "updated_at": 1788400030, "task_id": NEWAPI_ID,
        "platform": "45", "user_id": 1, "group": "default", "channel_id": 3, "quota": 1000,
        "action": "generate", "status": "SUBMITTED", "fail_reason": "", "submit_time": 1788400000,
        "start_time": 0, "finish_time": 0, "progress": "0%", "properties": {},
        "data": {"id": ARK_ID, "status": "queued"},
    }  # fmt: skip
    data.update(fields)
    return {"code": "success", "message": "", "data": data}


def ark_task(**fields):
    task = {
        "id": ARK_ID, "model": "doubao-seedance-1-0-pro-250528", "status": "queued",
        "created_at": 1743414619, "updated_at": 1743414619,
    }  # fmt: skip
    task.update(fields)
    return task


def runway_task(**fields):
    task = {"id": RUNWAY_ID, "createdAt": "2024-06-27T19:49:32.335Z", "status": "PENDING"}
    task.update(fields)
    return task


def prediction(**fields):
    task = {
        "id": REPLICATE_ID, "model": "bytedance/seedance-1-pro",
        "version": "hidden", "input": {"prompt": "a fox"}, "logs": "", "output": None,
        "data_removed": False, "error": None, "status": "starting",
        "created_at": "2026-07-14T09:12:03.221000Z", "started_at": None, "completed_at": None,
        "urls": {"get": f"https://api.replicate.com/v1/predictions/{REPLICATE_ID}"},
        "metrics": {},
    }  # fmt: skip
    task.update(fields)
    return task


ARK_AUTH = {
    "error": {
        "code": "AuthenticationError",
        "message": "The API key or AK/SK in the request is missing or invalid. Request id: 0217",
        "param": "",
        "type": "Unauthorized",
    }
}
ARK_LIMIT = {
    "error": {
        "code": "RateLimitExceeded.EndpointRPMExceeded",
        "message": "The Requests Per Minute (RPM) limit of the associated endpoint for your account has been exceeded. Request id: 0217",
        "param": "",
        "type": "TooManyRequests",
    }
}
ARK_MISSING = {
    "error": {
        "code": "ResourceNotFound",
        "message": f"The specified task {ARK_ID} is not found. Request id: 0217",
        "param": "id",
        "type": "NotFound",
    }
}
ARK_OVERDUE = {
    "error": {
        "code": "AccountOverdueError",
        "message": "The request failed because your account has an overdue balance. Request id: 0217",
        "param": "",
        "type": "Forbidden",
    }
}
NEWAPI_TOKEN = {
    "error": {"message": "Invalid token (request id: 2026)", "type": "new_api_error", "code": ""}
}
REPLICATE_AUTH = {
    "title": "Unauthenticated",
    "detail": "You did not pass a valid authentication token",
    "status": 401,
}
REPLICATE_LIMIT = {
    "detail": "Request was throttled. Your rate limit resets in ~30s.",
    "status": 429,
}


def classify(name, status_code, body, headers=None):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    family = upstreams.family(name)
    return family.classify(status_code, httpx.Headers(headers or {}), content, ID[name])


LIMITED = {
    "error": {
        **NEWAPI_TOKEN["error"],
        "message": "This token has no access to model  (request id: 1)",
    }
}
ANSWERS = [
        # new-api's task route: the wrapper, its "no such task", its key refusals.
        ("new-api-task", 200, row(), None, "ok", None),
        ("new-api-task", 200, row(task_id="task_other"), None, "error", None),
        ("new-api-task", 200, {"code": "success", "data": None}, None, "error", None),
        ("new-api-task", 400, {"code": "task_not_exist", "message": "task_not_exist", "data": None}, None, "not_found", None),
        ("new-api-task", 401, NEWAPI_TOKEN, None, "unauthorized", None),
        ("new-api-task", 403, LIMITED, None, "forbidden", None),
        ("new-api-task", 429, b"<html>busy</html>", {"Retry-After": "7"}, "rate_limited", 7.0),
        ("new-api-task", 500, {"code": "get_task_failed", "message": "db", "data": None}, None, "error", None),
        ("new-api-task", 400, {"code": "invalid_channel_id", "message": "x", "data": None}, None, "lasting", None),
        # Volcengine Ark.
        ("ark", 200, ark_task(), None, "ok", None),
        ("ark", 200, ark_task(id="cgt-20250101000000-other"), None, "error", None),
        ("ark", 200, {"error": {"code": "InternalServiceError", "message": "x"}}, None, "error", None),
        ("ark", 404, ARK_MISSING, None, "not_found", None),
        ("ark", 401, ARK_AUTH, None, "unauthorized", None),
        ("ark", 403, ARK_OVERDUE, None, "forbidden", None),
        ("ark", 429, ARK_LIMIT, None, "rate_limited", None),
        ("ark", 503, {"error": {"code": "ServerOverloaded", "message": "x"}}, None, "error", None),
        # Runway.
        ("runway", 200, runway_task(), None, "ok", None),
        ("runway", 200, runway_task(id="0e8c5a3e-0000-4000-8000-000000000000"), None, "error", None),
        ("runway", 200, [], None, "error", None),
        ("runway", 404, {"error": "Task not found"}, None, "not_found", None),
        ("runway", 401, {"error": "Invalid API key"}, None, "unauthorized", None),
        ("runway", 429, {"error": "Too many requests"}, {"Retry-After": "5"}, "rate_limited", 5.0),
        ("runway", 429, {"error": "Daily limit reached"}, None, "rate_limited", None),
        ("runway", 400, {"error": "Invalid API version"}, None, "error", None),
        ("runway", 502, b"", None, "error", None),
        # Replicate.
        ("replicate", 200, prediction(), None, "ok", None),
        ("replicate", 200, prediction(id="other"), None, "error", None),
        ("replicate", 404, {"detail": "Not found.", "status": 404}, None, "not_found", None),
        ("replicate", 401, REPLICATE_AUTH, None, "unauthorized", None),
        ("replicate", 429, REPLICATE_LIMIT, None, "rate_limited", 30.0),
        ("replicate", 429, REPLICATE_LIMIT, {"Retry-After": "2"}, "rate_limited", 2.0),
        ("replicate", 500, {"detail": "Internal server error", "status": 500}, None, "error", None),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "status_code", "body", "headers", "outcome", "retry_after"), ANSWERS
)
def test_answers_are_classified(name, status_code, body, headers, outcome, retry_after):
    fetch = classify(name, status_code, body, headers)
    assert fetch.outcome == outcome, fetch.detail
    assert fetch.retry_after == retry_after
    assert (fetch.video is not None) == (outcome == "ok")


def test_a_task_object_is_kept_unwrapped_and_clean():
    fetch = classify("new-api-task", 200, row(status="IN_PROGRESS"))
    assert fetch.video["task_id"] == NEWAPI_ID and json.loads(fetch.text) == fetch.video
    raw = b"\xef\xbb\xbf" + json.dumps(runway_task()).encode()  # a byte-order mark first
    fetch = classify("runway", 200, raw)
    assert fetch.outcome == "ok" and fetch.text == json.dumps(runway_task(), separators=(",", ":"))


def test_error_words_are_the_providers_own():
    assert (classify("ark", 403, ARK_OVERDUE).code, classify("ark", 403, ARK_OVERDUE).message) == (
        "AccountOverdueError",
        ARK_OVERDUE["error"]["message"],
    )
    assert (
        classify("runway", 400, {"error": "Invalid API version"}).message == "Invalid API version"
    )
    unavailable = {"title": "Service unavailable", "detail": "try later", "status": 503}
    fetch = classify("replicate", 503, unavailable)
    assert (fetch.code, fetch.message) == ("Service unavailable", "try later")


def test_an_answer_too_large_is_a_passing_error():
    fetch = classify("ark", 200, b" " * (2 * 1024 * 1024))
    assert fetch.outcome == "error" and fetch.detail == "upstream answer too large"


def result(name, task):
    return upstreams.result(upstreams.family(name), task)


def expect(status, progress=0, video_url=None, error=None):
    return {"status": status, "progress": progress, "video_url": video_url, "error": error}


def ended(word, progress=0, message=None):
    """A failure's result: a provider that gave no code (or no error at all) gets its
    status word as the code, so that every failure says why in the same shape."""
    error = {"code": word, "message": message or f"the upstream reported the task {word}"}
    return expect("failed", progress, error=error)


SAFETY = {"code": "SAFETY.INPUT.TEXT", "message": "The prompt was flagged by moderation."}
SENSITIVE = {
    "code": "InputTextSensitiveContentDetected",
    "message": "The request failed because the input text may contain sensitive information.",
}
REFUSED = "the provider refused the prompt"
BAR = "Using seed: 7\n 42%|████▏     | 21/50 [00:04<00:06]\n"
GEMINI = {"error": None, "format": "mp4", "metadata": None, "task_id": NEWAPI_ID}
TASKS = [
        # new-api's task words, "NN%" progress, result_url and fail_reason.
        ("new-api-task", row()["data"], expect("in_progress")),
        ("new-api-task", row(status="NOT_START")["data"], expect("in_progress")),
        ("new-api-task", row(status="QUEUED", progress="10%")["data"], expect("in_progress", 10)),
        ("new-api-task", row(status="IN_PROGRESS", progress="50%")["data"], expect("in_progress", 50)),
        ("new-api-task", row(status="UNKNOWN", progress="30%")["data"], expect("in_progress", 30)),
        ("new-api-task", row(status="SUCCESS", progress="100%", result_url=LINK)["data"], expect("completed", 100, LINK)),
        ("new-api-task", row(status="FAILURE", progress="100%", fail_reason=REFUSED)["data"],
         ended("failure", 100, REFUSED)),
        ("new-api-task", row(status="FAILURE", progress="100%")["data"], ended("failure", 100)),
        # new-api's view of Gemini and Vertex tasks, asked of the provider at once.
        ("new-api-task", {**GEMINI, "status": "succeeded", "url": LINK}, expect("completed", 100, LINK)),
        ("new-api-task", {**GEMINI, "status": "processing", "url": ""}, expect("in_progress")),
        # Volcengine Ark: no progress; content.video_url; error {code, message}.
        ("ark", ark_task(), expect("in_progress")),
        ("ark", ark_task(status="running"), expect("in_progress")),
        ("ark", ark_task(status="succeeded", content={"video_url": LINK}, error=None), expect("completed", 100, LINK)),
        ("ark", ark_task(status="failed", error=SENSITIVE), expect("failed", error=SENSITIVE)),
        ("ark", ark_task(status="cancelled"), ended("cancelled")),
        ("ark", ark_task(status="expired"), ended("expired")),
        # Runway: a fraction for progress, output a list, failure and failureCode.
        ("runway", runway_task(), expect("in_progress")),
        ("runway", runway_task(status="THROTTLED"), expect("in_progress")),
        ("runway", runway_task(status="RUNNING", progress=0.57), expect("in_progress", 57)),
        ("runway", runway_task(status="RUNNING", progress=1), expect("in_progress", 100)),
        ("runway", runway_task(status="SUCCEEDED", output=[LINK, "https://x/2.mp4"]), expect("completed", 100, LINK)),
        ("runway", runway_task(status="FAILED", failure=SAFETY["message"], failureCode=SAFETY["code"]),
         expect("failed", error=SAFETY)),
        ("runway", runway_task(status="CANCELLED"), ended("cancelled")),
        # Replicate: progress from the logs' progress bar; output a URL, a list or an object.
        ("replicate", prediction(), expect("in_progress")),
        ("replicate", prediction(status="processing", logs=BAR), expect("in_progress", 42)),
        ("replicate", prediction(status="succeeded", output=LINK), expect("completed", 100, LINK)),
        ("replicate", prediction(status="succeeded", output=[LINK]), expect("completed", 100, LINK)),
        ("replicate", prediction(status="succeeded", output={"seed": 7, "video": LINK}), expect("completed", 100, LINK)),
        ("replicate", prediction(status="failed", error="CUDA out of memory"),
         ended("failed", message="CUDA out of memory")),
        ("replicate", prediction(status="canceled"), ended("canceled")),
        ("replicate", prediction(status="aborted"), ended("aborted")),
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "task", "expected"), TASKS)
def test_tasks_read_into_one_result_shape(name, task, expected):
    assert result(name, task) == expected


@pytest.mark.parametrize("name", sorted(upstreams.FAMILIES))
def test_every_family_gives_the_same_result_shape(name):
    nothing = result(name, None)
    assert nothing == expect("in_progress")
    # status-proxy's own give-up (tasks.given_up_data) reads as failed with its code.
    given_up = {
        "id": ID[name],
        "status": "failed",
        "error": {"code": "status_proxy_timeout", "message": "m"},
    }
    assert result(name, given_up) == expect(
        "failed", error={"code": "status_proxy_timeout", "message": "m"}
    )


WORDS = [
        (new_api_task, {"NOT_START": "in_progress", "SUBMITTED": "in_progress", "QUEUED": "in_progress",
                        "IN_PROGRESS": "in_progress", "UNKNOWN": "in_progress", "SUCCESS": "completed",
                        "FAILURE": "failed"}),
        (ark, {"queued": "in_progress", "running": "in_progress", "succeeded": "completed",
               "failed": "failed", "cancelled": "failed", "expired": "failed"}),
        (runway, {"PENDING": "in_progress", "THROTTLED": "in_progress", "RUNNING": "in_progress",
                  "SUCCEEDED": "completed", "FAILED": "failed", "CANCELLED": "failed"}),
        (replicate, {"starting": "in_progress", "processing": "in_progress", "succeeded": "completed",
                     "failed": "failed", "canceled": "failed", "aborted": "failed"}),
    ]  # fmt: skip


@pytest.mark.parametrize(("family", "words"), WORDS)
def test_every_documented_word(family, words, caplog):
    for word, kind in words.items():
        reading = family.read({"id": "x", "task_id": "x", "status": word})
        assert (reading.kind.value, reading.raw_status) == (kind, word)
    assert "unknown upstream status" not in caplog.text


def test_a_completed_task_without_its_link_yet_is_pending():
    assert runway.read(runway_task(status="SUCCEEDED", output=[])).link_pending
    assert replicate.read(prediction(status="succeeded", output=None)).link_pending
    assert not ark.read(ark_task(status="succeeded")).link_pending  # no content at all


@pytest.mark.parametrize(
    ("name", "path", "headers"),
    [
        ("openai-video", "/v1/videos/a%2F..%2Fb", {}),
        ("new-api-task", "/v1/video/generations/a%2F..%2Fb", {}),
        ("ark", "/api/v3/contents/generations/tasks/a%2F..%2Fb", {}),
        ("runway", "/v1/tasks/a%2F..%2Fb", {"X-Runway-Version": "2024-11-06"}),
        ("replicate", "/v1/predictions/a%2F..%2Fb", {}),
    ],
)
def test_how_each_family_asks(name, path, headers):
    family = upstreams.family(name)
    assert family.status_path("a/../b") == path
    assert dict(family.headers()) == headers
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(404, json={})

    async def ask():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            url = "https://up.example" + family.status_path("a/../b")
            answer = await client.get(
                url, headers={**family.headers(), "Authorization": "Bearer k"}
            )
            return family.classify(answer.status_code, answer.headers, answer.content, "a/../b")

    assert asyncio.run(ask()).outcome == "not_found"
    assert seen[0].url.raw_path.decode() == path  # the id stays one segment
    for key, value in headers.items():
        assert seen[0].headers[key] == value


def test_every_family_is_registered():
    assert set(upstreams.FAMILIES) == {"openai-video", "new-api-task", "ark", "runway", "replicate"}
    assert [f.openai_routes for f in upstreams.FAMILIES.values()] == [
        True,
        False,
        False,
        False,
        False,
    ]
