"""GET /v1/videos/{task_id}: the cached snapshot, or one fetch-through."""

from tests.harness import eventually


def test_tracked_task_is_served_from_the_snapshot(service, upstream, hooks):
    task = upstream.add(duration=60)
    service.register(task, f"{hooks.url}/h")
    eventually(lambda: upstream.polls(task) >= 1)
    polls = upstream.polls(task)
    response = eventually(
        lambda: (r := service.client.get(f"/v1/videos/{task}")).status_code == 200 and r
    )
    assert response.json()["id"] == task
    assert int(response.headers["age"]) >= 0
    assert response.headers["content-type"].startswith("application/json")
    assert upstream.polls(task) <= polls + 1  # served from the store, not fetched


def test_snapshot_is_the_raw_upstream_bytes(service, upstream, hooks):
    task = upstream.add(duration=60, empty_fields=True)
    service.register(task, f"{hooks.url}/h")
    response = eventually(
        lambda: (r := service.client.get(f"/v1/videos/{task}")).status_code == 200 and r
    )
    body = response.json()
    assert body["video_url"] == "" and body["error"] == {"message": "", "code": ""}


def test_untracked_task_is_fetched_through(service, upstream):
    task = upstream.add(duration=60)
    response = service.client.get(f"/v1/videos/{task}")
    assert response.status_code == 200 and response.json()["id"] == task
    assert response.headers["age"] == "0"
    assert upstream.polls(task) == 1


def test_unknown_task_is_404(service):
    response = service.client.get("/v1/videos/video_nobody_knows")
    assert response.status_code == 404 and response.json()["error"]["param"] == "task_id"


def test_bad_task_id_is_422_and_never_reaches_the_upstream(service, upstream):
    for bad in ("a..b", "-x", "a%20b", "%2e%2e", "a%00b", "%E2%80%AEx", "a%5Cb"):
        response = service.client.get(f"/v1/videos/{bad}")
        assert response.status_code == 422, bad
        # NUL is refused before routing, for every path (no column can hold it).
        assert response.json()["error"]["param"] == (None if "%00" in bad else "task_id")
    for escape in ("../../admin", "x/../../v1/other", "x%2F..%2F..%2Fadmin", "x/content/../.."):
        # (httpx resolves dot segments: some of these become GET /v1/videos, the list)
        response = service.client.get(f"/v1/videos/{escape}")
        assert response.status_code in (404, 422) or response.json()["object"] == "list", escape
    assert upstream.sim.requests == 0


def test_upstream_failure_is_502(service, upstream):
    upstream.sim.faults.server_error = 1.0
    response = service.client.get("/v1/videos/video_x")
    assert response.status_code == 502 and "error" in response.json()


def test_upstream_timeout_is_504(make_service, upstream):
    service = make_service(upstream_timeout=0.3)
    upstream.sim.faults.latency = 1.0
    response = service.client.get("/v1/videos/video_x")
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"


def test_the_list_of_videos_checks_its_parameters(service, upstream):
    created = [
        service.client.post("/v1/videos", json={"model": "m"}).json()["id"] for _ in range(3)
    ]
    page = service.client.get("/v1/videos", params={"limit": 2}).json()
    assert [v["id"] for v in page["data"]] == created[::-1][:2] and page["has_more"] is True
    assert page["first_id"] == created[2] and page["last_id"] == created[1]
    rest = service.client.get("/v1/videos", params={"limit": 2, "after": page["last_id"]}).json()
    assert [v["id"] for v in rest["data"]] == [created[0]] and rest["has_more"] is False
    for params, param in (
        ({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "sideways"}, "order"),
        ({"after": "video_not_mine"}, "after"), ({"before": "x"}, "before"),
    ):  # fmt: skip
        answer = service.client.get("/v1/videos", params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.json()["error"]["param"] == param


def test_a_deleted_video_is_gone_on_an_open_api_too(service, upstream):
    task = upstream.add(duration=60)
    assert service.register(task, "http://127.0.0.1:9/x").status_code == 201
    deleted = service.client.delete(f"/v1/videos/{task}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert service.client.get(f"/v1/videos/{task}").status_code == 404
    assert service.client.get("/v1/videos").json()["data"] == []
    registration = service.client.get("/v1/registrations").json()["data"][0]
    assert registration["state"] == "cancelled"
    # The upstream's own answer to a delete passes through: here it no longer knows it.
    again = service.client.delete(f"/v1/videos/{upstream.add(duration=60)}x")
    assert again.status_code == 404 and again.json()["error"]["message"] == "Video not found"


def test_content_of_a_watched_task_the_upstream_does_not_know_is_404(service, upstream, hooks):
    """Registered, polled, never seen upstream: an unknown task (404), not an unready one."""
    service.register("video_nowhere", f"{hooks.url}/h")
    eventually(lambda: upstream.polls("video_nowhere") >= 1)
    answer = eventually(
        lambda: (
            (r := service.client.get("/v1/videos/video_nowhere/content")).status_code == 404 and r
        )
    )
    assert answer.json()["error"]["param"] == "task_id"
    # A task the upstream shows, still running, is the usual 409.
    task = upstream.add(duration=60)
    service.register(task, f"{hooks.url}/h")
    eventually(lambda: upstream.polls(task) >= 1)
    running = eventually(
        lambda: (r := service.client.get(f"/v1/videos/{task}/content")).status_code == 409 and r
    )
    assert running.json()["error"]["param"] == "task_id"
