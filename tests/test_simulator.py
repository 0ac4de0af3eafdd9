"""The simulated upstream behaves like a new-api gateway."""

import httpx

from tests.harness import UPSTREAM_KEY

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
