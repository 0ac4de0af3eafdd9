"""Several upstreams at once (the contract's "Upstreams"): two OpenAI-style simulators
with their own keys behind one status-proxy. A task is its upstream plus its id; each
upstream has its own rate limit, 429 pause and key state; webhooks name their upstream."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import upstreams
from service.config import UpstreamEntry
from service.upstreams import openai_video
from tests.conftest import Upstream
from tests.harness import SECRET, ServerThread, eventually, metric

OTHER_KEY = "sk-other-account-71c2"
SAME = "video_same-id-on-both"


@pytest.fixture
def other(simulate: Callable[..., Upstream]) -> Upstream:
    """A second OpenAI-style upstream: another gateway account, its own key."""
    return simulate("openai-video", api_key=OTHER_KEY)


def with_other(make_service: Any, other: Upstream, key: str = OTHER_KEY, **overrides: Any) -> Any:
    entry = {"base_url": other.url, "api_key": key, "family": "openai-video"}
    return make_service(upstreams={"other": entry, **overrides.pop("more", {})}, **overrides)


def test_the_same_id_on_two_upstreams_is_two_tasks(make_service, upstream, other, hooks):
    service = with_other(make_service, other)
    upstream.add(id=SAME, duration=0.3, queued=0)
    other.add(id=SAME, duration=0.3, queued=0, outcome="failed")
    first = service.register(SAME, f"{hooks.url}/h")
    second = service.register(SAME, f"{hooks.url}/h", upstream="other")
    assert (first.status_code, second.status_code) == (201, 201)  # not the same registration
    assert (first.json()["upstream"], second.json()["upstream"]) == ("default", "other")
    again = service.register(SAME, f"{hooks.url}/h", upstream="other")
    assert again.status_code == 200 and again.json()["id"] == second.json()["id"]

    arrived = eventually(lambda: len(hooks.at("/h")) == 2 and hooks.at("/h"))
    events = {delivery.json["upstream"]: delivery.json for delivery in arrived}
    assert all(delivery.verified for delivery in arrived)
    done, failed = events["default"], events["other"]
    assert done["registration_id"] == first.json()["id"] and done["task_id"] == SAME
    assert done["type"] == "video.completed" and done["result"]["status"] == "completed"
    assert failed["registration_id"] == second.json()["id"] and failed["task_id"] == SAME
    assert failed["type"] == "video.failed" and failed["result"]["status"] == "failed"
    assert failed["result"]["error"]["code"] == "generation_failed"
    assert failed["data"]["status"] == "failed"  # data stays the upstream's raw object
    assert upstream.polls(SAME) >= 1 and other.polls(SAME) >= 1

    # Each {task_id} route takes ?upstream=; without it, the default upstream's task.
    assert service.client.get(f"/v1/videos/{SAME}").json()["status"] == "completed"
    theirs = service.client.get(f"/v1/videos/{SAME}", params={"upstream": "other"})
    assert theirs.json()["status"] == "failed"
    assert service.client.get(f"/v1/videos/{SAME}/content").status_code == 200
    content = service.client.get(f"/v1/videos/{SAME}/content", params={"upstream": "other"})
    assert content.status_code == 409
    # The list has the videos of every upstream, each id once (a cursor is only an id):
    # at its newest place, here "other"'s. Registrations filter by upstream.
    listed = service.client.get("/v1/videos").json()["data"]
    assert [(video["id"], video["status"]) for video in listed] == [(SAME, "failed")]
    page = service.client.get("/v1/registrations", params={"upstream": "other"}).json()
    assert [item["id"] for item in page["data"]] == [second.json()["id"]]
    # Metrics say which upstream.
    requests = "status_proxy_upstream_requests_total"
    assert metric(service, requests, upstream="other", outcome="ok") >= 1
    assert metric(service, requests, upstream="default", outcome="ok") >= 1
    assert metric(service, "status_proxy_tasks", upstream="other", state="ended") == 1


def test_a_create_goes_to_the_upstream_it_names(make_service, upstream, other, hooks):
    service = with_other(make_service, other)
    created = service.client.post(
        "/v1/videos",
        json={"model": "sora-2", "prompt": "a cat", "upstream": "other",
              "callback_url": f"{hooks.url}/made"},
    )  # fmt: skip
    assert created.status_code == 200, created.text
    video = created.json()
    assert video["id"] in other.sim.tasks and video["id"] not in upstream.sim.tasks
    assert "upstream" not in other.sim.created[-1].fields  # consumed, never forwarded
    assert video["registration"]["upstream"] == "other"
    [delivery] = eventually(lambda: hooks.at("/made"), timeout=20)
    assert delivery.json["upstream"] == "other" and delivery.json["task_id"] == video["id"]
    # Its routes find it without ?upstream= (the caller has it on one upstream only).
    assert service.client.get(f"/v1/videos/{video['id']}").json()["id"] == video["id"]
    remix = service.client.post(f"/v1/videos/{video['id']}/remix", json={"prompt": "a dog"})
    assert remix.status_code == 200 and remix.json()["id"] in other.sim.tasks
    crossed = service.client.post(
        f"/v1/videos/{video['id']}/remix", json={"prompt": "x", "upstream": "default"}
    )
    assert crossed.status_code == 422 and crossed.json()["error"]["param"] == "upstream"


def test_a_rate_limit_on_one_upstream_never_slows_another(make_service, upstream, other, hooks):
    service = with_other(make_service, other)
    upstream.sim.faults.rate_limit = 1.0  # every answer of the default upstream is a 429
    upstream.sim.faults.retry_after = "120"
    held = upstream.add(duration=0.3, queued=0)
    service.register(held, f"{hooks.url}/held")
    requests = "status_proxy_upstream_requests_total"
    eventually(lambda: metric(service, requests, upstream="default", outcome="rate_limited"))
    paused_at = upstream.sim.requests
    free = [other.add(duration=0.3, queued=0) for _ in range(3)]
    for task in free:
        assert service.register(task, f"{hooks.url}/free", upstream="other").status_code == 201
    # The other upstream's tasks are polled and delivered while the default one waits
    # out its Retry-After (two minutes, far beyond this wait).
    eventually(lambda: len(hooks.at("/free")) == 3, timeout=30)
    assert all(other.polls(task) >= 1 for task in free)  # a slow first poll may see the end
    assert upstream.sim.requests == paused_at and hooks.at("/held") == []
    ready = service.client.get("/readyz").json()
    assert ready["upstreams"]["default"]["rate_limited"] is True
    assert "rate_limited" not in ready["upstreams"]["other"]


def test_a_refused_key_on_one_upstream_leaves_the_other_polling(
    make_service, upstream, other, hooks
):
    service = with_other(
        make_service, other, key="sk-refused-key-5e0b", operator_webhook_url=f"{hooks.url}/ops"
    )
    stuck = other.add(duration=0.3, queued=0)
    service.register(stuck, f"{hooks.url}/stuck", upstream="other")
    ready = eventually(
        lambda: (answer := service.client.get("/readyz")).status_code == 503 and answer
    )
    body = ready.json()
    assert any(reason.startswith("upstream other: ") for reason in body["reasons"]), body
    assert body["upstreams"]["other"]["state"] == "key_refused"
    assert body["upstreams"]["default"]["state"] != "key_refused"
    assert "sk-refused-key-5e0b" not in ready.text
    # The default upstream goes on polling and delivering meanwhile.
    tasks = [upstream.add(duration=0.3, queued=0) for _ in range(2)]
    for task in tasks:
        service.register(task, f"{hooks.url}/fine")
    eventually(lambda: len(hooks.at("/fine")) == 2, timeout=20)
    assert hooks.at("/stuck") == []
    refused = eventually(
        lambda: [d.json for d in hooks.at("/ops") if d.json["type"] == "upstream.key_refused"]
    )
    assert [event["data"]["upstream"] for event in refused] == ["other"]
    # The key works again: the other upstream resumes and delivers.
    other.sim.api_key = "sk-refused-key-5e0b"
    eventually(lambda: hooks.at("/stuck"), timeout=30)
    eventually(lambda: service.client.get("/readyz").status_code == 200, timeout=10)


def test_unknown_upstreams_are_422(make_service, other, hooks):
    service = with_other(make_service, other)
    refusals = [
        service.register("video_1", f"{hooks.url}/h", upstream="nowhere"),
        service.client.post("/v1/videos", json={"model": "m", "upstream": "nowhere"}),
        service.client.post(
            "/v1/videos", files={"upstream": (None, "nowhere"), "model": (None, "m")}
        ),
        service.client.get("/v1/videos/video_1", params={"upstream": "nowhere"}),
        service.client.get("/v1/videos/video_1/content", params={"upstream": "nowhere"}),
        service.client.delete("/v1/videos/video_1", params={"upstream": "nowhere"}),
        service.client.get("/v1/registrations", params={"upstream": "nowhere"}),
    ]
    for answer in refusals:
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["param"] == "upstream"
        assert "nowhere" in answer.json()["error"]["message"]
    assert other.sim.created == []


# A family read like openai-video whose provider takes no OpenAI video routes.
NoRoutes = dataclasses.replace(openai_video.FAMILY, name="test-no-routes", openai_routes=False)


def test_an_upstream_without_openai_routes_takes_registrations_only(
    make_service, other, hooks, monkeypatch
):
    monkeypatch.setitem(upstreams.FAMILIES, NoRoutes.name, NoRoutes)
    entry = {"base_url": other.url, "api_key": OTHER_KEY, "family": NoRoutes.name}
    service = make_service(upstreams={"provider": entry})
    task = other.add(duration=0.3, queued=0)
    made = service.client.post("/v1/videos", json={"model": "m", "upstream": "provider"})
    assert made.status_code == 422 and made.json()["error"]["param"] == "upstream"
    assert "POST /v1/registrations" in made.json()["error"]["message"]
    assert other.sim.created == []
    reg = service.register(task, f"{hooks.url}/p", upstream="provider")
    assert reg.status_code == 201
    [delivery] = eventually(lambda: hooks.at("/p"), timeout=20)
    assert delivery.json["upstream"] == "provider" and delivery.json["result"]["progress"] == 100
    assert service.client.get(f"/v1/videos/{task}").json()["status"] == "completed"
    for answer in (
        service.client.get(f"/v1/videos/{task}/content"),
        service.client.delete(f"/v1/videos/{task}"),
        service.client.post(f"/v1/videos/{task}/remix", json={"prompt": "x"}),
    ):
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "upstream"


def test_keys_see_only_their_own_task_on_each_upstream(make_service, upstream, other):
    service = with_other(make_service, other, api_keys=["alice", "bob"])
    bob = httpx.Client(base_url=service.url, headers={"Authorization": "Bearer bob"}, timeout=15)
    try:
        upstream.add(id=SAME, duration=60)
        other.add(id=SAME, duration=60)
        callback = "http://127.0.0.1:9/h"
        assert service.register(SAME, callback, upstream="other").status_code == 201
        assert (
            bob.post(
                "/v1/registrations", json={"task_id": SAME, "callback_url": callback}
            ).status_code
            == 201
        )
        # Alice has the id on "other" only: without ?upstream= it means that one.
        eventually(lambda: service.client.get(f"/v1/videos/{SAME}").status_code == 200)
        assert (
            service.client.get(f"/v1/videos/{SAME}", params={"upstream": "default"}).status_code
            == 404
        )
        # Bob has it on "default" only.
        assert bob.get(f"/v1/videos/{SAME}", params={"upstream": "other"}).status_code == 404
        assert bob.get(f"/v1/videos/{SAME}").status_code == 200
        assert [v["id"] for v in bob.get("/v1/videos").json()["data"]] == [SAME]
    finally:
        bob.close()


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_section() -> str:
    return README.read_text().split("## Watching several upstreams", 1)[1].split("\n## ", 1)[0]


def test_the_readme_configuration_is_well_formed():
    block = re.search(r"STATUS_PROXY_UPSTREAMS='(.*?)'", readme_section(), flags=re.DOTALL)
    assert block is not None
    entries = json.loads(block[1])
    assert set(entries) == {"octopus-b", "ark", "runway"}
    for name, entry in entries.items():
        assert re.fullmatch(r"[a-z0-9-]{1,32}", name)
        assert set(entry) <= set(UpstreamEntry.model_fields), name
        assert {"base_url", "api_key", "family"} <= set(entry), name
    assert entries["runway"]["poll_interval_min"] >= 5  # what Runway asks


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_readme_handler_serves_every_upstream(make_service, upstream, other, capsys):
    [handler] = re.findall(r"```python\n(.*?)```", readme_section(), flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(handler.replace('"whsec_…"', repr(SECRET)), namespace)  # our README, as written
    hooks = ServerThread(namespace["app"]).start()
    try:
        service = with_other(make_service, other)
        upstream.add(id=SAME, duration=0.3, queued=0)
        other.add(id=SAME, duration=0.3, queued=0, outcome="failed")
        regs = [
            service.register(SAME, f"{hooks.url}/hooks/video", upstream=name).json()["id"]
            for name in ("default", "other")
        ]
        eventually(lambda: all(service.registration(r)["state"] == "delivered" for r in regs))
    finally:
        hooks.stop()
    printed = capsys.readouterr().out
    assert f"default/{SAME} is ready: http" in printed
    assert f"other/{SAME} failed: the model gave up" in printed


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_listing_an_id_held_on_two_upstreams_shows_it_once_and_skips_nothing(
    make_service, upstream, other, hooks, limit
):
    service = with_other(make_service, other)
    made = [("default", SAME), ("default", "video_mid"), ("other", SAME), ("default", "video_new")]
    for name, task in made:
        (upstream if name == "default" else other).add(id=task, duration=60)
        assert service.register(task, f"{hooks.url}/l", upstream=name).status_code == 201
        time.sleep(0.01)  # listing order is by creation time

    seen: list[str] = []
    after = None
    for _ in range(10):
        params = {"limit": limit, **({"after": after} if after else {})}
        page = service.client.get("/v1/videos", params=params).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    else:
        raise AssertionError(f"paging never ended: {seen}")
    # Each id once, at its newest place (here the "other" upstream's), whatever the page.
    assert seen == ["video_new", SAME, "video_mid"]
    assert page["data"][-1]["id"] == "video_mid"


def test_a_refused_key_on_a_named_upstream_names_its_setting(make_service, other):
    service = with_other(make_service, other, key="sk-revoked-on-other")
    task = other.add(duration=60)
    for answer in (
        service.client.post("/v1/videos", json={"model": "m", "upstream": "other"}),
        service.client.get(f"/v1/videos/{task}", params={"upstream": "other"}),
        service.client.delete(f"/v1/videos/{task}", params={"upstream": "other"}),
        service.client.get(f"/v1/videos/{task}/content", params={"upstream": "other"}),
    ):
        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert error["code"] == "upstream_key_refused"
        assert "'other' in STATUS_PROXY_UPSTREAMS" in error["message"], error
        assert "sk-revoked-on-other" not in answer.text


def test_a_start_without_an_upstream_that_still_has_watched_tasks_says_so(
    make_service, other, hooks
):
    first = with_other(make_service, other)
    task = other.add(duration=600)
    assert first.register(task, f"{hooks.url}/gone", upstream="other").status_code == 201
    first.stop()
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    runtime_log = logging.getLogger("service.runtime")
    runtime_log.addHandler(handler)
    try:
        make_service()  # "other" is no longer configured
    finally:
        runtime_log.removeHandler(handler)
    assert [line for line in said if "not configured" in line] == [
        "1 watched task(s) belong to upstream 'other', which is not configured: they are not "
        "polled until STATUS_PROXY_UPSTREAMS names it again, and are given up after "
        "STATUS_PROXY_TASK_TIMEOUT"
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"json": {"model": "m", "upstream": None}}, "upstream"),
        ({"files": {"upstream": ("u.txt", b"other")}, "data": {"model": "m"}}, "upstream"),
        ({"files": {"callback_url": ("c.txt", b"https://example.com/h")}, "data": {}}, "callback_url"),
        ({"files": [("model", (None, b"m")), ("upstream", (None, b"other")),
                    ("upstream", (None, b"default"))]}, "upstream"),
    ],
    ids=["json-null", "file-part", "callback-as-file", "named-twice"],
)  # fmt: skip
def test_a_create_that_names_its_upstream_unclearly_is_refused_before_anything_is_made(
    make_service, upstream, other, body, param
):
    service = with_other(make_service, other)
    answer = service.client.post("/v1/videos", **body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == param
    assert upstream.sim.created == [] and other.sim.created == []


@pytest.mark.parametrize(
    "path", ["/v1/videos/video_x", "/v1/registrations", "/v1/videos", "/v1/videos/video_x/content"]
)
def test_a_query_parameter_given_twice_is_refused_not_guessed(make_service, other, path):
    service = with_other(make_service, other)
    answer = service.client.get(path, params=[("upstream", "other"), ("upstream", "default")])
    if path == "/v1/videos":  # the list takes no upstream: the same rule, another name
        answer = service.client.get(path, params=[("limit", "1"), ("limit", "2")])
    assert answer.status_code == 422, answer.text
    assert "more than once" in answer.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/registrations", "/v1/videos"])
def test_a_json_member_given_twice_is_refused_not_guessed(make_service, upstream, other, path):
    service = with_other(make_service, other)
    body = (
        '{"task_id": "video_x", "model": "m", "callback_url": "https://example.com/h",'
        ' "upstream": "other", "upstream": "default"}'
    )
    answer = service.client.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == "upstream"
    assert "more than once" in answer.json()["error"]["message"]
    assert upstream.sim.created == [] and other.sim.created == []
