"""Every provider family end to end, several at once: the real service polls a
simulator of each (Ark, Runway, Replicate, new-api's task route) beside the default
OpenAI-style gateway, and every webhook has the same shape, read by its family:
completed, failed, not found, rate limited and key refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Upstream
from tests.harness import UPSTREAM_KEY, Service, eventually, metric

FAMILIES = {"ark": "ark", "runway": "runway", "replicate": "replicate", "tasks": "new-api-task"}
# What each provider's raw object says once a task ended: `data` is passed on as it came.
RAW_DONE = {"ark": "succeeded", "runway": "SUCCEEDED", "replicate": "succeeded", "tasks": "SUCCESS"}


@pytest.fixture
def sims(simulate: Callable[..., Upstream]) -> dict[str, Upstream]:
    return {name: simulate(family, duration=0.4) for name, family in FAMILIES.items()}


def start(make_service: Any, sims: dict[str, Upstream], **overrides: Any) -> Service:
    keys = overrides.pop("keys", {})
    entries = {
        name: {
            "base_url": sim.url,
            "api_key": keys.get(name, UPSTREAM_KEY),
            "family": FAMILIES[name],
        }
        for name, sim in sims.items()
    }
    return make_service(upstreams=entries, not_found_grace=1.0, **overrides)


def webhook(hooks: Any, path: str) -> dict[str, Any]:
    [delivery] = eventually(lambda: hooks.at(path), timeout=30)
    assert delivery.verified
    body: dict[str, Any] = delivery.json
    return body


def the_others_go_on(service: Service, sims: dict[str, Upstream], hooks: Any, held: str) -> None:
    """Every upstream but ``held`` completes a new task at once."""
    others = {name: sim for name, sim in sims.items() if name != held}
    for name, sim in others.items():
        service.register(sim.add(queued=0), f"{hooks.url}/other/{name}", upstream=name)
    for name in others:
        assert webhook(hooks, f"/other/{name}")["type"] == "video.completed"


def test_every_family_completes_and_fails_with_one_webhook_shape(make_service, sims, hooks):
    service = start(make_service, sims)
    made: dict[str, tuple[str, str]] = {}
    for name, sim in sims.items():
        done, failed = sim.add(queued=0), sim.add(queued=0, outcome="failed")
        for task, end in ((done, "done"), (failed, "failed")):
            answer = service.register(task, f"{hooks.url}/{name}/{end}", upstream=name)
            assert answer.status_code == 201, answer.text
            assert answer.json()["upstream"] == name
        made[name] = (done, failed)
    for name, (done, failed) in made.items():
        completed = webhook(hooks, f"/{name}/done")
        assert completed["type"] == "video.completed", (name, completed)
        assert (completed["upstream"], completed["task_id"]) == (name, done)
        result = completed["result"]
        assert result["status"] == "completed" and result["progress"] == 100, (name, result)
        assert result["video_url"] and result["error"] is None, (name, result)
        raw = completed["data"].get("status") or completed["data"]["data"]["status"]
        assert raw == RAW_DONE[name], (name, completed["data"])

        ended = webhook(hooks, f"/{name}/failed")
        assert ended["type"] == "video.failed", (name, ended)
        assert (ended["upstream"], ended["task_id"]) == (name, failed)
        assert ended["result"]["status"] == "failed" and ended["result"]["video_url"] is None
        assert ended["result"]["error"]["message"], (name, ended["result"])
    # Each upstream was asked with its own route: the cached snapshot is its raw object.
    for name, (done, _) in made.items():
        snapshot = service.client.get(f"/v1/videos/{done}", params={"upstream": name})
        assert snapshot.status_code == 200, (name, snapshot.text)


def test_a_task_no_provider_knows_fails_as_not_found(make_service, sims, hooks):
    service = start(make_service, sims)
    for name in sims:
        answer = service.register("video_nobody-knows-it", f"{hooks.url}/{name}", upstream=name)
        assert answer.status_code == 201, answer.text
    for name in sims:
        body = webhook(hooks, f"/{name}")
        assert body["type"] == "video.failed" and body["upstream"] == name
        assert body["result"]["error"]["code"] == "status_proxy_not_found", (name, body)
        assert body["data"]["error"]["code"] == "status_proxy_not_found"


# Per family, on SQLite: what a family changes is how answers read, not the database
# (the tests above run every family on both).
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("limited", list(FAMILIES))
def test_a_rate_limited_provider_waits_and_slows_no_other(make_service, sims, hooks, limited):
    service = start(make_service, sims)
    sims[limited].sim.faults.rate_limit = 1.0
    sims[limited].sim.faults.retry_after = "1"
    waiting = sims[limited].add(queued=0)
    service.register(waiting, f"{hooks.url}/limited", upstream=limited)
    eventually(
        lambda: metric(service, "status_proxy_upstream_requests_total",
                       upstream=limited, outcome="rate_limited") > 0
    )  # fmt: skip
    the_others_go_on(service, sims, hooks, limited)
    assert not hooks.at("/limited")
    sims[limited].sim.faults.rate_limit = 0.0
    assert webhook(hooks, "/limited")["type"] == "video.completed"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("refused", list(FAMILIES))
def test_a_refused_key_pauses_that_provider_only(make_service, sims, hooks, refused):
    service = start(make_service, sims, keys={refused: "sk-revoked"})
    waiting = sims[refused].add(queued=0)
    service.register(waiting, f"{hooks.url}/refused", upstream=refused)

    def named() -> bool:
        ready = service.client.get("/readyz")
        return ready.status_code == 503 and refused in ready.text

    eventually(named)
    the_others_go_on(service, sims, hooks, refused)
    assert not hooks.at("/refused")
    sims[refused].sim.api_key = "sk-revoked"  # the operator's key works again
    assert webhook(hooks, "/refused")["type"] == "video.completed"
    eventually(lambda: service.client.get("/readyz").status_code == 200)
