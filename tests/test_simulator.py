"""The simulated upstream behaves like a new-api gateway."""

import json

import httpx

from tests.harness import UPSTREAM_KEY, eventually

AUTH = {"Authorization": f"Bearer {UPSTREAM_KEY}"}


def test_create_from_json_and_multipart(upstream):
    with httpx.Client(base_url=upstream.url, headers=AUTH) as client:
        made = client.post("/v1/videos", json={"model": "sora-2", "prompt": "a cat", "seconds": 4})
        assert made.status_code == 200 and made.json()["status"] == "queued"
        assert made.json()["model"] == "sora-2"
        form = client.post(
            "/v1/videos",
            data={"model": "doubao-seedance-1-0-pro", "prompt": "a dog", "size": "720x1280"},
            files={"first_frame_image": ("f.png", b"\x89PNG fake", "image/png")},
        )
        assert form.status_code == 200 and form.json()["size"] == "720x1280"
        status = client.get(f"/v1/videos/{form.json()['id']}")
        assert status.status_code == 200 and status.json()["id"] == form.json()["id"]


def test_unknown_task_is_new_api_400(upstream):
    response = httpx.get(f"{upstream.url}/v1/videos/video_missing", headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {"code": "task_not_exist", "message": "task_not_exist", "data": None}


def test_key_is_checked(upstream):
    task = upstream.add()
    response = httpx.get(f"{upstream.url}/v1/videos/{task}", headers={"Authorization": "Bearer no"})
    assert response.status_code == 401


def test_faults_are_injected(upstream):
    task = upstream.add()
    upstream.sim.faults.rate_limit = 1.0
    upstream.sim.faults.retry_after = "3"
    limited = httpx.get(f"{upstream.url}/v1/videos/{task}", headers=AUTH)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    upstream.sim.faults.rate_limit = 0.0
    upstream.sim.faults.server_error = 1.0
    assert httpx.get(f"{upstream.url}/v1/videos/{task}", headers=AUTH).status_code == 503


def newapi_client(upstream, refresh=0.3):
    upstream.sim.profile = "new-api"
    upstream.sim.refresh = refresh
    return httpx.Client(base_url=upstream.url, headers=AUTH)


def test_new_api_create_answers_200_with_a_task_id(upstream):
    with newapi_client(upstream) as client:
        made = client.post("/v1/videos", json={"model": "doubao-seedance-1-0-pro-250528"})
        body = made.json()
        assert made.status_code == 200 and body["id"] == body["task_id"]
        assert body["id"].startswith("task_") and len(body["id"]) == 37
        assert (body["object"], body["status"], body["progress"]) == ("video", "queued", 0)
        first = client.get(f"/v1/videos/{body['id']}").json()
        # Before new-api's first refresh; no video_url field, the link goes in metadata.url.
        assert first["status"] == "unknown" and first["metadata"] == {"url": ""}
        assert "video_url" not in first


def test_new_api_create_429_is_saturation_without_retry_after_then_succeeds(upstream):
    upstream.sim.faults.create_status = 429
    upstream.sim.faults.create_failures = 1
    with newapi_client(upstream) as client:
        busy = client.post("/v1/videos", json={"model": "doubao-seedance-1-0-pro-250528"})
        assert busy.status_code == 429 and "retry-after" not in busy.headers
        assert busy.json()["code"] == "fail_to_fetch_task"
        again = client.post("/v1/videos", json={"model": "doubao-seedance-1-0-pro-250528"})
        assert again.status_code == 200 and again.json()["status"] == "queued"


def test_new_api_content_400_404_and_range_ignored(upstream):
    with newapi_client(upstream, refresh=0.05) as client:
        running = upstream.add(duration=60, queued=0)
        early = client.get(f"/v1/videos/{running}/content")
        assert early.status_code == 400
        assert early.json()["error"]["message"].startswith("Task is not completed yet")
        missing = client.get("/v1/videos/task_missing/content")
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == "Task not found"
        done = upstream.add(duration=0.05, queued=0, content_size=1000)
        eventually(lambda: client.get(f"/v1/videos/{done}").json()["status"] == "completed")
        whole = client.get(f"/v1/videos/{done}/content", headers={"Range": "bytes=10-19"})
        assert whole.status_code == 200 and len(whole.content) == 1000
        assert whole.headers["content-length"] == "1000" and "content-range" not in whole.headers
        upstream.sim.faults.content_status = 403
        blocked = client.get(f"/v1/videos/{done}/content")
        assert blocked.status_code == 403 and blocked.text.startswith("request blocked")


def test_new_api_errors_have_its_shapes(upstream):
    with newapi_client(upstream) as client:
        lasting = upstream.add(duration=60, error="not_implemented")
        answer = client.get(f"/v1/videos/{lasting}")
        assert answer.status_code == 501 and answer.json()["code"] == "not_implemented"
        hidden = upstream.add(duration=60, error="hidden")
        answer = client.get(f"/v1/videos/{hidden}")
        assert answer.status_code == 403 and answer.json()["error"]["type"] == "new_api_error"
        refused = httpx.get(f"{upstream.url}/v1/videos/{hidden}", headers={"Authorization": "x"})
        assert refused.status_code == 401 and "Invalid token" in refused.json()["error"]["message"]


def test_status_answers_come_in_the_chosen_bytes(upstream):
    task = upstream.add(duration=60)
    upstream.sim.faults.encoding = "bom"
    raw = httpx.get(f"{upstream.url}/v1/videos/{task}", headers=AUTH).content
    assert raw.startswith(b"\xef\xbb\xbf")
    upstream.sim.faults.encoding = "utf-16"
    raw = httpx.get(f"{upstream.url}/v1/videos/{task}", headers=AUTH).content
    assert raw.startswith(b"\xff\xfe") and json.loads(raw)["id"] == task
    upstream.sim.faults.encoding = "utf-8"
    upstream.sim.faults.not_video = 1.0
    upstream.sim.faults.not_video_body = "html"
    page = httpx.get(f"{upstream.url}/v1/videos/{task}", headers=AUTH)
    assert page.status_code == 200 and page.text.startswith("<html>")
