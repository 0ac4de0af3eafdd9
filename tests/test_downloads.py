"""GET /v1/videos/{task_id}/content against a gateway that answers as new-api does: it
ignores Range (always 200 with the whole file), answers 400 "Task is not completed yet"
and 404 "Task not found", and its own URL guard answers 403."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.simulator import video_bytes
from tests.harness import ServerThread

SIZE = 300_007
CHUNK = 65_536
BIG = 64 * 1024 * 1024  # far more than socket buffers hold


@pytest.fixture
def new_api():
    """Every task reads as completed (status-proxy asks once before downloading); its
    content route answers as new-api's does, by task id."""
    sent = {"bytes": 0}
    app = FastAPI()

    @app.get("/v1/videos/{task_id}")
    async def video(task_id: str) -> JSONResponse:
        return JSONResponse({"id": task_id, "object": "video", "status": "completed",
                             "progress": 100, "metadata": {"url": ""}})  # fmt: skip

    @app.get("/v1/videos/{task_id}/content", response_model=None)
    async def content(task_id: str, request: Request) -> Response:
        if task_id == "task_running":
            message = "Task is not completed yet, current status: IN_PROGRESS"
            return JSONResponse(
                {"error": {"message": message, "type": "invalid_request_error"}}, 400
            )
        if task_id == "task_gone":
            return JSONResponse(
                {"error": {"message": "Task not found", "type": "invalid_request_error"}}, 404
            )
        if task_id == "task_blocked":
            return Response("request blocked: private address", 403, media_type="text/plain")

        size = BIG if task_id == "task_big" else SIZE

        async def whole():
            for offset in range(0, size, CHUNK):
                chunk = video_bytes(offset, min(CHUNK, size - offset))
                sent["bytes"] += len(chunk)
                yield chunk
                # Sends to a client that left are no-ops that never suspend: give the
                # server's disconnect watcher a turn, or a busy loop "sends" the whole file.
                await asyncio.sleep(0)

        return StreamingResponse(whole(), 200, {"Content-Length": str(size)}, "video/mp4")

    thread = ServerThread(app).start()
    yield thread.url, sent
    thread.stop()


@pytest.fixture
def service(make_service, new_api):
    return make_service(upstream_base_url=new_api[0])


def get(service, task: str, byte_range: str | None = None):
    headers = {"Range": byte_range} if byte_range else {}
    return service.client.get(f"/v1/videos/{task}/content", headers=headers)


@pytest.mark.parametrize(
    ("asked", "first", "last"),
    [("bytes=0-99", 0, 99), ("bytes=70000-140000", 70_000, 140_000), ("bytes=-10", SIZE - 10, SIZE - 1),
     ("bytes=300000-", 300_000, SIZE - 1), ("bytes=65530-65540", 65_530, 65_540)],
)  # fmt: skip
def test_a_range_the_upstream_ignores_is_cut_from_the_stream(service, asked, first, last):
    answer = get(service, "task_done", asked)
    assert answer.status_code == 206, answer.text
    assert answer.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert answer.headers["content-length"] == str(last - first + 1)
    assert answer.content == video_bytes(first, last - first + 1)


def test_the_whole_file_and_ranges_that_are_not_served(service, new_api):
    whole = get(service, "task_done")
    assert whole.status_code == 200 and whole.content == video_bytes(0, SIZE)
    several = get(service, "task_done", "bytes=0-1,5-6")  # a server may send the whole
    assert several.status_code == 200 and len(several.content) == SIZE
    outside = get(service, "task_done", f"bytes={SIZE}-")
    assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{SIZE}"
    assert outside.json()["error"]["code"] == "range_not_satisfiable"


def test_the_download_stops_once_the_range_is_sent(service, new_api):
    _, sent = new_api
    sent["bytes"] = 0
    assert get(service, "task_big", "bytes=0-9").content == video_bytes(0, 10)
    assert sent["bytes"] < BIG // 2  # the rest of the file was never read


def test_new_api_refusals(service):
    running = get(service, "task_running")
    assert running.status_code == 409, running.text
    assert "not completed" in running.json()["error"]["message"]
    assert get(service, "task_gone").status_code == 404
    blocked = get(service, "task_blocked")
    assert blocked.status_code == 502
    message = blocked.json()["error"]["message"]
    assert "request blocked" in message and "key" not in message
    assert service.client.get("/readyz").status_code == 200  # nothing thinks the key is bad
