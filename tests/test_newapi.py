"""Every answer of ../shared/UPSTREAM.md, by family, replayed through the real service:
the simulator plays vanilla new-api over HTTP, a real receiver takes the webhooks."""

import json
import logging
import time

import httpx
import pytest

from tests.harness import UPSTREAM_KEY, eventually, sql

# A "completed" with no link would wait this many extra polls if it were misread: far
# longer than the waits below, so a held-back webhook fails the test.
HOLD = 100


@pytest.fixture
def newapi(upstream):
    """The simulator as vanilla new-api, refreshing its tasks every 0.3 s."""
    upstream.sim.profile = "new-api"
    upstream.sim.refresh = 0.3
    return upstream


def strict_json(raw: bytes):
    """Parse as strict receivers do: UTF-8 only, no byte-order mark, no NaN."""
    assert not raw.startswith(b"\xef\xbb\xbf")
    return json.loads(raw.decode("utf-8"), parse_constant=lambda word: pytest.fail(word))


def finished(hooks, path):
    """The terminal webhook that arrived at ``path``."""
    ended = eventually(
        lambda: [d for d in hooks.at(path) if d.json["type"] != "video.progress"], timeout=20
    )
    assert len(ended) == 1
    return ended[0]


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


# --- the video object of each family --------------------------------------------------


def test_doubao_unknown_then_coarse_progress_then_metadata_url(make_service, newapi, hooks):
    service = make_service(empty_video_retries=HOLD)
    task = newapi.add(duration=0.6, queued=0.3)
    assert task.startswith("task_") and len(task) == 37
    warned = Warnings()
    logging.getLogger("service.status").addHandler(warned)
    try:
        events = ["video.completed", "video.failed", "video.progress"]
        reg = service.register(task, f"{hooks.url}/d", events=events).json()
        delivery = finished(hooks, "/d")
    finally:
        logging.getLogger("service.status").removeHandler(warned)
    event = strict_json(delivery.body)
    assert event["type"] == "video.completed" and event["task_id"] == task
    assert event["upstream"] == "default" and event["registration_id"] == reg["id"]
    link = event["data"]["metadata"]["url"]
    assert link.startswith("https://ark.example/") and "video_url" not in event["data"]
    assert event["result"] == {
        "status": "completed", "progress": 100, "video_url": link, "error": None,
    }  # fmt: skip
    seen = [d.json["data"]["status"] for d in hooks.at("/d") if d.json["type"] == "video.progress"]
    assert seen[0] == "unknown"  # before new-api's first refresh; read as in progress
    progress = {d.json["result"]["progress"] for d in hooks.at("/d")}
    assert progress <= {0, 10, 50, 100}
    assert not [m for m in warned.messages if "unknown" in m]


def test_a_link_field_still_empty_is_polled_a_few_more_times(make_service, newapi, hooks):
    service = make_service(empty_video_retries=3)
    task = newapi.add(duration=0.2, queued=0, no_video=True)
    service.register(task, f"{hooks.url}/e")
    delivery = finished(hooks, "/e")
    assert delivery.json["type"] == "video.completed"
    assert delivery.json["data"]["metadata"] == {"url": ""}
    assert delivery.json["result"]["video_url"] is None


def test_sora_completes_at_once_without_a_link(make_service, newapi, hooks):
    service = make_service(empty_video_retries=HOLD)
    task = newapi.add(model="sora-2", duration=0.3, queued=0)
    service.register(task, f"{hooks.url}/s")
    event = finished(hooks, "/s").json
    assert event["type"] == "video.completed" and event["data"]["id"] == task
    assert event["result"]["video_url"] is None and event["result"]["status"] == "completed"


def test_sora_stored_error_body_is_a_failure(make_service, newapi, hooks):
    service = make_service()
    task = newapi.add(model="sora-2", duration=0.3, queued=0, outcome="failed")
    service.register(task, f"{hooks.url}/sf")
    event = finished(hooks, "/sf").json
    assert event["type"] == "video.failed"
    assert "status" not in event["data"] and event["data"]["id"] == task  # the raw object
    assert event["result"]["status"] == "failed"
    assert event["result"]["error"]["code"] == "moderation_blocked"


def test_ali_error_beside_unknown_does_not_end_the_task(make_service, newapi, hooks):
    service = make_service()
    task = newapi.add(model="wan2.5-t2v", duration=1.2, queued=0.3)
    reg = service.register(task, f"{hooks.url}/a").json()
    eventually(lambda: service.registration(reg["id"])["task"] is not None)
    eventually(lambda: service.registration(reg["id"])["task"].get("error"))  # throttled
    assert service.registration(reg["id"])["state"] == "active"
    event = finished(hooks, "/a").json
    assert event["type"] == "video.completed" and event["result"]["video_url"]


@pytest.mark.parametrize(
    ("outcome", "error"),
    [("failed", {"message": "the provider refused the prompt",
                 "code": "InputTextSensitiveContentDetected"}),
     ("timed_out", None)],
)  # fmt: skip
def test_doubao_failures(make_service, newapi, hooks, outcome, error):
    service = make_service()
    task = newapi.add(duration=0.3, queued=0, outcome=outcome)
    service.register(task, f"{hooks.url}/f")
    event = finished(hooks, "/f").json
    assert event["type"] == "video.failed" and event["data"]["status"] == "failed"
    assert event["data"].get("error") == error
    # new-api's own 24 h give-up has no error object: the result names the status word.
    said = {"code": "failed", "message": "the upstream reported the task failed"}
    assert event["result"]["error"] == (error or said)


def test_flat_task_view_ends_tasks_with_the_failure_reason(make_service, newapi, hooks):
    service = make_service(empty_video_retries=HOLD)
    done = newapi.add(duration=0.3, queued=0, view="flat")
    failed = newapi.add(duration=0.3, queued=0, view="flat", outcome="failed")
    service.register(done, f"{hooks.url}/ok")
    service.register(failed, f"{hooks.url}/no")
    ok = finished(hooks, "/ok").json
    assert ok["type"] == "video.completed" and ok["data"]["status"] == "SUCCESS"
    assert ok["data"]["progress"] == "100%" and ok["result"]["progress"] == 100
    no = finished(hooks, "/no").json
    assert no["type"] == "video.failed" and no["data"]["status"] == "FAILURE"
    assert no["result"]["error"] == {
        "code": "failure",
        "message": "the provider refused the prompt",
    }


def test_the_success_wrapper_is_unwrapped(make_service, newapi, hooks):
    service = make_service(empty_video_retries=HOLD)
    task = newapi.add(duration=0.3, queued=0, view="wrapped")
    reg = service.register(task, f"{hooks.url}/w").json()
    event = finished(hooks, "/w").json
    assert event["type"] == "video.completed"
    assert event["data"]["task_id"] == task and event["data"]["status"] == "SUCCESS"
    assert event["result"]["video_url"] == event["data"]["result_url"]
    assert service.registration(reg["id"])["task"]["status"] == "SUCCESS"
    stored = service.client.get(f"/v1/videos/{task}").json()
    assert "code" not in stored and stored["task_id"] == task


# --- answers that are not a video ------------------------------------------------------


@pytest.mark.parametrize("body", ["error", "html", "list", "null"])
def test_a_200_that_is_not_a_video_is_a_passing_error(make_service, newapi, hooks, body):
    service = make_service(not_found_grace=0.5)
    task = newapi.add(duration=60, queued=0)  # runs until the faults are in place
    reg = service.register(task, f"{hooks.url}/n").json()
    eventually(lambda: service.registration(reg["id"])["task"] is not None)
    newapi.sim.faults.not_video_body = body
    newapi.sim.faults.not_video = 1.0
    newapi.sim.tasks[task].duration = 0  # it has ended upstream, behind the faults
    polls = newapi.polls(task)
    eventually(lambda: newapi.polls(task) >= polls + 3)
    time.sleep(1.0)  # twice the grace
    assert hooks.at("/n") == [] and service.registration(reg["id"])["state"] == "active"
    snapshot = service.client.get(f"/v1/videos/{task}").json()
    assert snapshot["id"] == task  # the last video kept, never the error
    newapi.sim.faults.not_video = 0.0
    event = finished(hooks, "/n").json
    assert event["type"] == "video.completed" and event["data"]["id"] == task


# --- bytes that are not clean JSON -----------------------------------------------------


@pytest.mark.parametrize("encoding", ["bom", "utf-16", "latin-1", "lone-surrogate"])
def test_unclean_bytes_are_stored_and_sent_as_clean_json(make_service, newapi, hooks, encoding):
    newapi.sim.faults.encoding = encoding
    service = make_service()
    task = newapi.add(duration=0.3, queued=0)
    first = service.register(task, f"{hooks.url}/b1").json()
    event = strict_json(finished(hooks, "/b1").body)
    assert event["type"] == "video.completed" and event["data"]["id"] == task
    if encoding == "latin-1":
        assert (
            event["data"]["title"] == "caf\N{REPLACEMENT CHARACTER} cr\N{REPLACEMENT CHARACTER}me"
        )
    # Every route that reads the stored snapshot answers clean JSON, never 500.
    assert_snapshot_routes_are_clean(service, hooks, task, first["id"])


def test_a_stored_snapshot_with_a_byte_order_mark_never_answers_500(
    make_service, newapi, hooks, db_url
):
    service = make_service()
    task = newapi.add(duration=0.2, queued=0)
    first = service.register(task, f"{hooks.url}/b1").json()
    finished(hooks, "/b1")
    # A row kept by an older release, which stored the upstream's bytes as they came.
    raw = f'\ufeff{{"id":"{task}","status":"completed","title":"\\ud800"}}'
    sql(db_url, f"UPDATE tasks SET snapshot = '{raw}' WHERE task_id = '{task}'")
    assert_snapshot_routes_are_clean(service, hooks, task, first["id"])


def assert_snapshot_routes_are_clean(service, hooks, task, registration_id):
    one = service.client.get(f"/v1/registrations/{registration_id}")
    assert one.status_code == 200 and strict_json(one.content)["task"]["id"] == task
    listed = service.client.get("/v1/registrations", params={"task_id": task})
    assert listed.status_code == 200 and strict_json(listed.content)["data"][0]["task"]
    video = service.client.get(f"/v1/videos/{task}")
    assert video.status_code == 200 and strict_json(video.content)["id"] == task
    # A second registration of the ended task gets its webhook from the stored snapshot.
    second = service.register(task, f"{hooks.url}/b2")
    assert second.status_code == 201 and strict_json(second.content)["task"]["id"] == task
    event = strict_json(finished(hooks, "/b2").body)
    assert event["type"] == "video.completed" and event["data"]["id"] == task
    # The open API's dashboard, and its page of this registration.
    assert service.client.get("/dashboard").status_code == 200
    detail = service.client.get(f"/dashboard/registrations/{registration_id}")
    assert detail.status_code == 200 and task in detail.text


# --- 403, 401 and errors that will not go away -----------------------------------------


def test_a_403_on_one_task_does_not_pause_the_others(make_service, newapi, hooks):
    service = make_service(not_found_grace=30)
    hidden = newapi.add(duration=0.3, queued=0, error="hidden", error_for=1.5)
    others = [newapi.add(duration=0.8, queued=0) for _ in range(3)]
    service.register(hidden, f"{hooks.url}/h")
    for task in others:
        service.register(task, f"{hooks.url}/o")
    eventually(lambda: newapi.polls(hidden) >= 3)
    assert service.client.get("/readyz").status_code == 200
    eventually(lambda: len(hooks.at("/o")) == 3)
    event = finished(hooks, "/h").json  # visible again: it was never given up
    assert event["type"] == "video.completed"
    assert service.client.get("/readyz").status_code == 200


def test_a_task_hidden_for_good_reaches_its_grace(make_service, newapi, hooks):
    service = make_service(not_found_grace=1.0)
    hidden = newapi.add(duration=0.3, queued=0, error="hidden")
    service.register(hidden, f"{hooks.url}/h")
    event = finished(hooks, "/h").json
    assert event["result"]["error"]["code"] == "status_proxy_not_found"
    assert event["data"]["error"]["code"] == "status_proxy_not_found"


def test_403_from_several_different_tasks_is_the_key(make_service, newapi, hooks):
    service = make_service(not_found_grace=1.0)
    newapi.sim.faults.forbidden = 1.0  # a banned user: every task answers 403
    tasks = [newapi.add(duration=0.3, queued=0) for _ in range(4)]
    for task in tasks:
        service.register(task, f"{hooks.url}/k")
    ready = eventually(
        lambda: (r := service.client.get("/readyz")).status_code == 503 and r, timeout=10
    )
    assert "403" in " ".join(ready.json()["reasons"])
    time.sleep(2.0)  # twice the grace: paused, so no task is given up meanwhile
    assert hooks.at("/k") == []
    newapi.sim.faults.forbidden = 0.0
    eventually(lambda: service.client.get("/readyz").status_code == 200, timeout=10)
    eventually(lambda: len(hooks.at("/k")) == 4, timeout=20)
    assert {d.json["type"] for d in hooks.at("/k")} == {"video.completed"}


def test_a_refused_key_is_new_apis_401(make_service, newapi, hooks):
    newapi.sim.api_key = "sk-someone-else"
    service = make_service()
    task = newapi.add(duration=0.3, queued=0)
    service.register(task, f"{hooks.url}/r")
    eventually(lambda: service.client.get("/readyz").status_code == 503)
    newapi.sim.api_key = UPSTREAM_KEY
    assert finished(hooks, "/r").json["type"] == "video.completed"


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        ("not_implemented", 501, "not_implemented:doubao"),
        ("invalid_channel_id", 400, "invalid channel id"),
        ("convert_to_openai_video_failed", 500, "unmarshal failed"),
    ],
)
def test_lasting_errors_give_up_after_the_grace(
    make_service, newapi, hooks, error, status, message
):
    service = make_service(not_found_grace=1.0, task_timeout=3600)
    task = newapi.add(duration=0.3, queued=0, error=error)
    reg = service.register(task, f"{hooks.url}/l").json()
    eventually(lambda: newapi.polls(task) >= 2)
    assert service.registration(reg["id"])["state"] == "active"  # not at the first answer
    event = finished(hooks, "/l").json
    assert event["type"] == "video.failed"
    found = event["data"]["error"]
    assert found["code"] == "status_proxy_upstream_error"
    assert (found["upstream_status"], found["upstream_code"], found["upstream_message"]) == (
        status, error, message,
    )  # fmt: skip
    assert event["result"]["error"]["code"] == "status_proxy_upstream_error"
    assert error in event["result"]["error"]["message"]


def test_a_passing_database_error_keeps_its_backoff(make_service, newapi, hooks):
    service = make_service(not_found_grace=0.5)
    task = newapi.add(duration=0.3, queued=0, error="get_task_failed", error_for=2.0)
    reg = service.register(task, f"{hooks.url}/p").json()
    eventually(lambda: newapi.polls(task) >= 2)
    time.sleep(1.0)  # twice the grace: a lasting error would have been given up
    assert hooks.at("/p") == [] and service.registration(reg["id"])["state"] == "active"
    assert finished(hooks, "/p").json["type"] == "video.completed"


def test_an_untracked_task_hidden_by_a_403_is_404(service, newapi):
    hidden = newapi.add(duration=60, error="hidden")
    response = service.client.get(f"/v1/videos/{hidden}")
    assert response.status_code == 404 and response.json()["error"]["param"] == "task_id"
    shown = newapi.add(duration=60, view="wrapped")
    fetched = service.client.get(f"/v1/videos/{shown}")
    assert fetched.status_code == 200 and fetched.json()["task_id"] == shown


def test_the_new_api_simulator_serves_the_task_route_wrapped(newapi):
    task = newapi.add(duration=60)
    auth = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    body = httpx.get(f"{newapi.url}/v1/video/generations/{task}", headers=auth).json()
    assert body["code"] == "success" and body["data"]["task_id"] == task
    assert body["data"]["status"] == "SUBMITTED" and body["data"]["progress"] == "0%"
