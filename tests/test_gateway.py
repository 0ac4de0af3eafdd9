"""The gateway routes: create through status-proxy (JSON and multipart, registering in
the same call, idempotent), and download the video through it."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.simulator import video_bytes
from tests.harness import ServerThread, eventually, refused_port, sql

IMAGE = bytes(range(256)) * 12_000  # ~3 MB "reference image"


def sim_tasks(upstream) -> int:
    return len(upstream.sim.tasks)


# --- create ------------------------------------------------------------------------------


def test_json_create_registers_the_new_task_and_strips_our_fields(service, upstream, hooks):
    vendor = {"resolution": "720p", "content": [{"type": "image_url", "role": "first_frame"}]}
    answer = service.client.post(
        "/v1/videos",
        json={
            "model": "sora-2", "prompt": "a fox", "seconds": "4", "metadata": vendor,
            "callback_url": f"{hooks.url}/json", "events": ["video.completed"],
            "callback_metadata": {"order": 7}, "callback_headers": {"X-Tenant": "t1"},
            "upstream": "default",
        },
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    video = answer.json()
    assert video["object"] == "video" and video["model"] == "sora-2"
    registration = video["registration"]
    assert registration["task_id"] == video["id"] and registration["events"] == ["video.completed"]
    assert registration["metadata"] == {"order": 7}
    sent = upstream.sim.created[-1]
    assert sent.kind == "json"
    assert sent.fields == {"model": "sora-2", "prompt": "a fox", "seconds": "4", "metadata": vendor}
    eventually(lambda: hooks.at("/json"), timeout=20)
    webhook = hooks.at("/json")[0].json
    assert webhook["data"]["id"] == video["id"] and webhook["metadata"] == {"order": 7}


def test_json_create_without_a_callback_only_creates(service, upstream):
    answer = service.client.post("/v1/videos", json={"model": "sora-2", "prompt": "p"})
    assert answer.status_code == 200 and "registration" not in answer.json()
    assert service.client.get("/v1/registrations").json()["data"] == []


def test_multipart_create_streams_files_and_registers(service, upstream, hooks):
    answer = service.client.post(
        "/v1/videos",
        data={
            "model": "doubao-seedance-1-0-pro", "prompt": "a cat", "size": "1280x720",
            "seconds": "5", "callback_url": f"{hooks.url}/multi",
            "events": "video.completed,video.failed", "callback_metadata": '{"shot": "A1"}',
            "metadata": '{"resolution": "1080p"}',
        },
        files={
            "first_frame_image": ("first.png", IMAGE, "image/png"),
            "last_frame_image": ("last.png", IMAGE[::-1], "image/png"),
        },
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    video = answer.json()
    assert video["registration"]["metadata"] == {"shot": "A1"}
    assert video["registration"]["events"] == ["video.completed", "video.failed"]
    sent = upstream.sim.created[-1]
    assert sent.kind == "multipart"
    assert sent.fields == {
        "model": "doubao-seedance-1-0-pro", "prompt": "a cat", "size": "1280x720", "seconds": "5",
        "metadata": '{"resolution": "1080p"}',
    }  # fmt: skip
    assert sent.files["first_frame_image"] == ("first.png", "image/png", IMAGE)
    assert sent.files["last_frame_image"] == ("last.png", "image/png", IMAGE[::-1])
    eventually(lambda: hooks.at("/multi"), timeout=20)


def test_upstream_errors_pass_through_unchanged(service, upstream):
    upstream.sim.faults.create_status = 400
    answer = service.client.post(
        "/v1/videos", json={"model": "nope", "callback_url": "http://127.0.0.1:9/x"}
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": {"message": "invalid model", "type": "invalid_request_error"}}
    assert service.client.get("/v1/registrations").json()["data"] == []


def test_upstream_timeout_is_504(make_service, upstream):
    service = make_service(upstream_timeout=0.5)
    upstream.sim.faults.create_latency = 2.0
    answer = service.client.post("/v1/videos", json={"model": "m", "prompt": "p"})
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"callback_url": "ftp://example.com/x"}, "callback_url"),
        ({"callback_url": "http://127.0.0.1:9/x", "events": "video.sent"}, "events"),
        (
            {"callback_url": "http://127.0.0.1:9/x", "callback_metadata": "[1, 2]"},
            "callback_metadata",
        ),
        ({"callback_metadata": '{"a": 1}'}, "callback_metadata"),
        ({"callback_url": "http://127.0.0.1:9/x", "events": "video.progress"}, "events"),
        ({"callback_url": "http://127.0.0.1:9/x", "upstream": "elsewhere"}, "upstream"),
    ],
)
def test_bad_registration_fields_abort_the_upload(service, upstream, fields, param):
    before = sim_tasks(upstream)
    answer = service.client.post(
        "/v1/videos",
        data={"model": "m", "prompt": "p", **fields},
        files={"first_frame_image": ("f.png", IMAGE, "image/png")},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == param
    time.sleep(0.2)
    assert sim_tasks(upstream) == before  # the upstream never got a whole request


def test_bad_bodies_are_4xx(service):
    post = service.client.post
    assert (
        post("/v1/videos", content=b"{no", headers={"content-type": "application/json"}).status_code
        == 400
    )
    assert post("/v1/videos", json=[1, 2]).status_code == 422
    assert (
        post("/v1/videos", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    )
    no_boundary = {"content-type": "multipart/form-data"}
    assert post("/v1/videos", content=b"x", headers=no_boundary).status_code == 415
    broken = {"content-type": "multipart/form-data; boundary=zzz"}
    cut = post(
        "/v1/videos",
        content=b"--zzz\r\nContent-Disposition: form-data; name=a\r\n\r\nb",
        headers=broken,
    )
    assert cut.status_code in (400, 502) and "error" in cut.json()
    assert post("/v1/videos", json={}, headers={"Idempotency-Key": "bad key"}).status_code == 422


def test_an_upload_over_the_limit_is_413_and_creates_nothing(make_service, upstream):
    service = make_service(upload_limit=1024 * 1024)
    answer = service.client.post(
        "/v1/videos",
        data={"model": "m", "callback_url": "http://127.0.0.1:9/x"},
        files={"first_frame_image": ("f.png", IMAGE, "image/png")},
    )
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"
    time.sleep(0.2)
    assert upstream.sim.tasks == {}


@pytest.fixture
def counting_upstream():
    """An upstream whose create counts the bytes as they arrive, and keeps none; like
    many servers and proxies, it refuses a body without a Content-Length (411)."""
    received: list[int] = []
    app = FastAPI()

    @app.post("/v1/videos")
    async def create(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is None or "transfer-encoding" in request.headers:
            return JSONResponse({"error": {"message": "length required"}}, status_code=411)
        async for chunk in request.stream():
            received.append(len(chunk))
        assert sum(received) == int(declared)
        return JSONResponse({"id": "video_streamed", "object": "video", "status": "queued"})

    thread = ServerThread(app).start()
    yield received, thread.url
    thread.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_uploads_go_upstream_with_a_content_length(make_service, counting_upstream):
    """A form larger than the memory spool, sent by the client in chunks, arrives upstream
    whole with its length declared; so does a JSON body."""
    received, url = counting_upstream
    service = make_service(upstream_base_url=url)
    head = (
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
        b'--B\r\nContent-Disposition: form-data; name="callback_url"\r\n\r\n'
        b"http://127.0.0.1:9/x\r\n"
        b'--B\r\nContent-Disposition: form-data; name="first_frame_image"; '
        b'filename="f.png"\r\nContent-Type: image/png\r\n\r\n'
    )

    def body():  # chunked from the client
        yield head
        yield IMAGE
        yield b"\r\n--B--\r\n"

    answer = service.client.post(
        "/v1/videos", content=body(), headers={"content-type": "multipart/form-data; boundary=B"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["registration"]["task_id"] == "video_streamed"
    assert sum(received) > len(IMAGE)
    received.clear()
    answer = service.client.post("/v1/videos", json={"model": "m", "prompt": "p"})
    assert answer.status_code == 200, answer.text
    assert sum(received) == len(b'{"model": "m", "prompt": "p"}')


# --- idempotency -------------------------------------------------------------------------


def test_a_retry_with_the_same_key_gets_the_first_answer(service, upstream):
    body = {"model": "m", "prompt": "p", "callback_url": "http://127.0.0.1:9/x"}
    key = {"Idempotency-Key": "order-42-attempt"}
    first = service.client.post("/v1/videos", json=body, headers=key)
    again = service.client.post("/v1/videos", json=dict(reversed(body.items())), headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert len(upstream.sim.created) == 1
    other = service.client.post("/v1/videos", json={**body, "prompt": "q"}, headers=key)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    fresh = service.client.post("/v1/videos", json=body, headers={"Idempotency-Key": "k2"})
    assert fresh.json()["id"] != first.json()["id"]


def test_a_multipart_retry_matches_whatever_its_boundary(service, upstream):
    key = {"Idempotency-Key": "multi-1"}

    def send(boundary: str) -> httpx.Response:
        parts = httpx._multipart.MultipartStream(  # the same form, a new boundary each time
            data={"model": "m"}, files={"first_frame_image": ("f.png", IMAGE[:5000], "image/png")},
            boundary=boundary.encode(),
        )  # fmt: skip
        headers = {**key, "content-type": f"multipart/form-data; boundary={boundary}"}
        return service.client.post("/v1/videos", content=b"".join(parts), headers=headers)

    first, again = send("aaaa1111"), send("bbbb2222")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and len(upstream.sim.created) == 1


def test_concurrent_requests_with_one_key_create_one_task(service, upstream):
    upstream.sim.faults.create_latency = 1.0
    key = {"Idempotency-Key": "twins"}
    body = {"model": "m", "prompt": "p"}
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda _: service.client.post("/v1/videos", json=body, headers=key), range(2))
        )
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [200, 409], [a.text for a in answers]
    busy = next(answer for answer in answers if answer.status_code == 409)
    assert busy.headers["retry-after"] == "1"
    assert len(upstream.sim.created) == 1
    later = service.client.post("/v1/videos", json=body, headers=key)  # after: the answer
    assert later.status_code == 200 and later.headers["idempotent-replayed"] == "true"


def test_keys_are_scoped_per_api_key_and_failures_are_not_kept(make_service, upstream):
    service = make_service(api_keys=["alpha", "beta"], upstream_timeout=0.5)
    body, key = {"model": "m", "prompt": "p"}, "same-key"
    as_alpha = service.client.post("/v1/videos", json=body, headers={"Idempotency-Key": key})
    beta = {"Authorization": "Bearer beta", "Idempotency-Key": key}
    as_beta = service.client.post("/v1/videos", json=body, headers=beta)
    assert as_alpha.json()["id"] != as_beta.json()["id"]
    upstream.sim.faults.create_latency = 2.0  # times out: nothing stored
    timed_out = service.client.post("/v1/videos", json=body, headers={"Idempotency-Key": "t"})
    assert timed_out.status_code == 504
    upstream.sim.faults.create_latency = 0.0
    retried = service.client.post("/v1/videos", json=body, headers={"Idempotency-Key": "t"})
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers


# --- download ----------------------------------------------------------------------------


def _finished(upstream, service, size: int) -> str:
    """A task that completed, as status-proxy's poller has seen it (GET /v1/videos would
    fetch an unpolled task through, and say completed before the poller knows)."""
    task = upstream.add(duration=0.1, queued=0, content_size=size)
    registration = service.register(task, "http://127.0.0.1:9/none").json()["id"]
    eventually(
        lambda: (service.registration(registration)["task"] or {}).get("status") == "completed"
    )
    return task


def test_download_whole_and_in_ranges(service, upstream):
    size = 1_000_003
    task = _finished(upstream, service, size)
    whole = service.client.get(f"/v1/videos/{task}/content")
    assert whole.status_code == 200, whole.text
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["content-length"] == str(size)
    assert hashlib.sha256(whole.content).digest() == hashlib.sha256(video_bytes(0, size)).digest()
    part = service.client.get(f"/v1/videos/{task}/content", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == video_bytes(100, 100)
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    tail = service.client.get(f"/v1/videos/{task}/content", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == video_bytes(size - 10, 10)
    outside = service.client.get(f"/v1/videos/{task}/content", headers={"Range": f"bytes={size}-"})
    assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{size}"
    assert outside.json()["error"]["code"] == "range_not_satisfiable"


def test_download_is_409_until_completed_and_404_when_unknown(service, upstream):
    running = upstream.add(duration=60, queued=0)
    service.register(running, "http://127.0.0.1:9/none")
    answer = service.client.get(f"/v1/videos/{running}/content")
    assert answer.status_code == 409 and answer.json()["error"]["param"] == "task_id"
    untracked_running = upstream.add(duration=60, queued=0)
    assert service.client.get(f"/v1/videos/{untracked_running}/content").status_code == 409
    untracked_done = upstream.add(duration=0.01, queued=0)
    time.sleep(0.05)
    assert service.client.get(f"/v1/videos/{untracked_done}/content").status_code == 200
    assert service.client.get("/v1/videos/video_nowhere/content").status_code == 404
    failed = upstream.add(duration=0.01, queued=0, outcome="failed")
    service.register(failed, "http://127.0.0.1:9/none")
    eventually(lambda: service.client.get(f"/v1/videos/{failed}/content").status_code == 409)


def test_a_client_that_goes_away_closes_the_upstream_download(service, upstream):
    task = _finished(upstream, service, 200 * 1024 * 1024)  # far more than any buffer
    with service.client.stream("GET", f"/v1/videos/{task}/content") as answer:
        assert answer.status_code == 200
        for _ in answer.iter_raw(64 * 1024):
            break  # read one chunk, then hang up
    try:
        eventually(lambda: upstream.sim.downloads["aborted"] == 1, timeout=10)
    except AssertionError:
        raise AssertionError(f"downloads: {upstream.sim.downloads}") from None
    assert upstream.sim.downloads["finished"] == 0
    assert service.client.get("/healthz").status_code == 200


def test_gateway_routes_need_the_key(make_service, upstream):
    service = make_service(api_keys=["k"])
    bare = httpx.Client(base_url=service.url)
    try:
        assert bare.post("/v1/videos", json={"model": "m"}).status_code == 401
        assert bare.get("/v1/videos/video_x/content").status_code == 401
    finally:
        bare.close()
    assert upstream.sim.created == []


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_memory_stays_flat_whatever_the_size(db_url, upstream, counting_upstream):
    """200 MB down and 120 MB up through a real process: its peak memory barely moves."""
    from tests.test_process import serve

    received, uploads_url = counting_upstream
    task = upstream.add(duration=0.01, queued=0, content_size=200 * 1024 * 1024)
    proc = serve(db_url, upstream.url).wait_ready()
    try:
        time.sleep(0.1)
        before = _peak_rss_mb(proc.popen.pid)
        got = 0
        with httpx.stream("GET", f"{proc.url}/v1/videos/{task}/content", timeout=60) as answer:
            assert answer.status_code == 200
            for chunk in answer.iter_raw(1024 * 1024):
                got += len(chunk)
        assert got == 200 * 1024 * 1024
        after_download = _peak_rss_mb(proc.popen.pid)
    finally:
        proc.stop()
    assert after_download - before < 64, (before, after_download)

    proc = serve(db_url, uploads_url, STATUS_PROXY_UPLOAD_LIMIT=str(200 * 1024 * 1024))
    proc.wait_ready()
    try:
        time.sleep(0.1)
        before = _peak_rss_mb(proc.popen.pid)
        block = bytes(1024 * 1024)

        def body():
            yield b'--B\r\nContent-Disposition: form-data; name="first_frame_image"; '
            yield b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
            for _ in range(120):
                yield block
            yield b"\r\n--B--\r\n"

        answer = httpx.post(
            f"{proc.url}/v1/videos", content=body(), timeout=60,
            headers={"content-type": "multipart/form-data; boundary=B"},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert sum(received) > 120 * 1024 * 1024
        after_upload = _peak_rss_mb(proc.popen.pid)
    finally:
        proc.stop()
    assert after_upload - before < 64, (before, after_upload)


def test_a_database_failure_after_the_create_still_hands_back_the_task(service, upstream, hooks):
    url = service.settings.database_url
    sql(url, "ALTER TABLE registrations RENAME TO registrations_away")
    try:
        answer = service.client.post(
            "/v1/videos",
            json={"model": "m", "prompt": "p", "callback_url": f"{hooks.url}/late"},
            headers={"Idempotency-Key": "paid-for"},
        )
    finally:
        sql(url, "ALTER TABLE registrations_away RENAME TO registrations")
    assert answer.status_code == 200, answer.text
    video = answer.json()
    assert video["id"] in upstream.sim.tasks and "registration" not in video
    assert video["registration_error"]["code"] == "database_unavailable"
    assert "POST /v1/registrations" in video["registration_error"]["message"]
    # The client registers the task it was given once the database is back.
    assert service.register(video["id"], f"{hooks.url}/late").status_code == 201
    eventually(lambda: hooks.at("/late"), timeout=20)


def test_registration_fields_may_follow_the_files(service, upstream, hooks):
    """Parts arrive in the client's order: fields after a file are still consumed."""
    form = httpx._multipart.MultipartStream(
        data={}, files={"first_frame_image": ("f.png", IMAGE[:70_000], "image/png")},
        boundary=b"after-the-file",
    )  # fmt: skip
    tail = (
        b'--after-the-file\r\nContent-Disposition: form-data; name="events"\r\n\r\n'
        b'["video.completed"]\r\n'
        b'--after-the-file\r\nContent-Disposition: form-data; name="callback_url"\r\n\r\n'
        + f"{hooks.url}/after".encode()
        + b"\r\n--after-the-file--\r\n"
    )
    body = b"".join(form).removesuffix(b"--after-the-file--\r\n") + tail
    answer = service.client.post(
        "/v1/videos",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=after-the-file; charset=utf-8"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["registration"]["events"] == ["video.completed"]
    sent = upstream.sim.created[-1]
    assert sent.fields == {} and sent.files["first_frame_image"][2] == IMAGE[:70_000]


def test_a_retry_on_another_replica_gets_the_first_answer(make_service, upstream):
    first_replica, second_replica = make_service(), make_service()  # one database
    body, key = {"model": "m", "prompt": "p"}, {"Idempotency-Key": "across"}
    first = first_replica.client.post("/v1/videos", json=body, headers=key)
    again = second_replica.client.post("/v1/videos", json=body, headers=key)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert len(upstream.sim.created) == 1


# --- what the upstream answers -----------------------------------------------------------


@pytest.fixture
def odd_upstream():
    """An upstream whose create answer the test chooses: (status, body) or "hang up"."""
    answers: list[object] = []
    app = FastAPI()

    @app.post("/v1/videos")
    async def create(request: Request) -> JSONResponse:
        await request.body()
        status, body = answers.pop(0)
        return JSONResponse(body, status_code=status)

    thread = ServerThread(app).start()
    yield answers, thread.url
    thread.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_task_that_cannot_be_registered_is_said_so(make_service, odd_upstream, hooks):
    answers, url = odd_upstream
    service = make_service(upstream_base_url=url)
    body = {"model": "m", "callback_url": f"{hooks.url}/x"}
    answers.append((200, {"id": "no good/id", "object": "video", "status": "queued"}))
    answer = service.client.post("/v1/videos", json=body)
    assert answer.status_code == 200, answer.text
    video = answer.json()
    assert video["id"] == "no good/id" and video["status"] == "queued"  # the upstream's answer
    assert video["registration_error"]["code"] == "invalid_task_id"
    assert "registration" not in video
    # Without a callback nothing was asked: the answer is the upstream's, untouched.
    answers.append((200, {"id": "no good/id", "object": "video"}))
    plain = service.client.post("/v1/videos", json={"model": "m"})
    assert plain.json() == {"id": "no good/id", "object": "video"}
    # Builds of new-api before October 2025 answer only a task_id.
    answers.append((200, {"task_id": "cgt-2025-old-build"}))
    old = service.client.post("/v1/videos", json=body).json()
    assert old["registration"]["task_id"] == "cgt-2025-old-build"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_only_final_answers_are_kept_for_an_idempotency_key(make_service, odd_upstream):
    answers, url = odd_upstream
    service = make_service(upstream_base_url=url)
    saturated = {
        "code": "fail_to_fetch_task",
        "message": "当前分组上游负载已饱和，请稍后再试",
        "data": None,
    }
    for status in (429, 408, 425, 500, 503):
        answers.append((status, saturated))
        key = {"Idempotency-Key": f"retry-{status}"}
        first = service.client.post("/v1/videos", json={"model": "m"}, headers=key)
        assert first.status_code == status and first.json() == saturated
        answers.append((200, {"id": f"video_{status}", "object": "video"}))
        retried = service.client.post("/v1/videos", json={"model": "m"}, headers=key)
        assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    answers.append((400, {"code": "invalid_size", "message": "bad size", "data": None}))
    key = {"Idempotency-Key": "final-400"}
    refused = service.client.post("/v1/videos", json={"model": "m"}, headers=key)
    again = service.client.post("/v1/videos", json={"model": "m"}, headers=key)
    assert refused.status_code == again.status_code == 400
    assert again.headers["idempotent-replayed"] == "true" and answers == []


@pytest.fixture
def hanging_up_upstream():
    """A server that reads the request and closes the connection without answering."""
    import contextlib
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_upstream_failures_say_what_happened(make_service, hanging_up_upstream):
    service = make_service(upstream_base_url=hanging_up_upstream)
    answer = service.client.post("/v1/videos", json={"model": "m"})
    assert answer.status_code == 502, answer.text
    assert "closed the connection" in answer.json()["error"]["message"]
    refused = make_service(upstream_base_url=f"http://127.0.0.1:{refused_port()}")
    answer = refused.client.post("/v1/videos", json={"model": "m"})
    assert answer.status_code == 502 and "unreachable" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "metadata"),
    [
        ({"callback_metadata": '{"order": 42}'}, {"order": 42}),  # a JSON string in JSON
        ({"callback_metadata": {"order": 42}}, {"order": 42}),
    ],
)
def test_callback_metadata_in_json(service, upstream, body, metadata):
    answer = service.client.post(
        "/v1/videos", json={"model": "m", "callback_url": "http://127.0.0.1:9/x", **body}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["registration"]["metadata"] == metadata
    assert upstream.sim.created[-1].fields == {"model": "m"}


def test_form_fields_in_every_encoding(service, upstream):
    """Repeated events[], bracket fields nested and listed, a JSON string beside them."""
    fields = {
        "model": "m", "callback_url": "http://127.0.0.1:9/x",
        "events[]": ["video.completed", "video.progress"],
        "callback_metadata": '{"from_json": true}', "callback_metadata[order]": "42",
        "callback_metadata[ship][city]": "Lyon", "callback_metadata[tags][]": ["a", "b"],
        "callback_headers[X-Tenant]": "t1", "metadata[ratio]": "16:9",
    }  # fmt: skip
    answer = service.client.post("/v1/videos", data=fields, files={"f": ("f", b"x", "a/b")})
    assert answer.status_code == 200, answer.text
    registration = answer.json()["registration"]
    assert registration["events"] == ["video.completed", "video.progress"]
    assert registration["metadata"] == {
        "from_json": True, "order": "42", "ship": {"city": "Lyon"}, "tags": ["a", "b"],
    }  # fmt: skip
    assert upstream.sim.created[-1].fields == {"model": "m", "metadata[ratio]": "16:9"}
    bad = service.client.post(
        "/v1/videos",
        data={"callback_url": "http://127.0.0.1:9/x", "callback_metadata[]": "x"},
        files={"f": ("f", b"x", "a/b")},
    )
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "callback_metadata"
