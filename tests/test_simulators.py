"""Each family's simulator answers as its provider documents, checked by the family's own
classify and read (a round trip over HTTP on 127.0.0.1)."""

from types import SimpleNamespace

import httpx
import pytest

from service import upstreams
from tests.harness import UPSTREAM_KEY, eventually, free_port

PROVIDERS = ["new-api-task", "ark", "runway", "replicate"]


def ask(up, task_id, key=UPSTREAM_KEY, headers=None):
    """Ask the simulator for a task as the family would, and classify the answer."""
    family = upstreams.family(up.family)
    sent = {**family.headers(), "Authorization": f"Bearer {key}", **(headers or {})}
    answer = httpx.get(up.url + family.status_path(task_id), headers=sent, timeout=10)
    return family.classify(answer.status_code, answer.headers, answer.content, task_id), answer


def result(up, fetch):
    return upstreams.result(upstreams.family(up.family), fetch.video)


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_task_runs_to_completed_with_its_link(simulate, name):
    up = simulate(name)
    task = up.add(duration=0.6, queued=0.2)
    seen = []

    def done():
        fetch, _ = ask(up, task)
        assert fetch.outcome == "ok", fetch.detail
        seen.append(result(up, fetch))
        return seen[-1]["status"] == "completed"

    eventually(done, timeout=20, interval=0.05)
    assert {item["status"] for item in seen[:-1]} == {"in_progress"}
    assert seen[-1]["progress"] == 100 and seen[-1]["video_url"].startswith("http")
    assert seen[-1]["error"] is None


def said(word):
    """The result's error of a task the provider ended by a word alone."""
    return {"code": word, "message": f"the upstream reported the task {word}"}


FAILURES = [
    ("new-api-task", "failed", {"code": "failure", "message": "the provider refused the prompt"}),
    # new-api has no word for a provider's cancel: it keeps it as a failure.
    ("new-api-task", "cancelled", {"code": "failure", "message": "the provider refused the prompt"}),
    ("ark", "failed", {"code": "InputTextSensitiveContentDetected",
                       "message": "The request failed because the input text may contain sensitive information."}),
    ("ark", "cancelled", said("cancelled")),
    ("ark", "expired", said("expired")),
    ("runway", "failed", {"code": "SAFETY.INPUT.TEXT", "message": "The prompt was flagged by moderation."}),
    ("runway", "cancelled", said("cancelled")),
    ("replicate", "failed", {"code": "failed", "message": "CUDA out of memory"}),
    ("replicate", "cancelled", said("canceled")),
    ("replicate", "aborted", said("aborted")),
]  # fmt: skip


@pytest.mark.parametrize(("name", "outcome", "error"), FAILURES)
def test_a_task_ends_failed_in_the_providers_words(simulate, name, outcome, error):
    up = simulate(name, refresh=0.05)
    task = up.add(duration=0, queued=0, outcome=outcome)

    def ended():
        fetch, _ = ask(up, task)
        return fetch.outcome == "ok" and result(up, fetch)["status"] != "in_progress" and fetch

    fetch = eventually(ended, timeout=10)
    assert result(up, fetch)["status"] == "failed"
    assert result(up, fetch)["error"] == error


@pytest.mark.parametrize("name", PROVIDERS)
def test_running_progress_reads_0_to_100(simulate, name):
    up = simulate(name, refresh=0.05)
    task = up.add(duration=30, queued=0)

    def moving():
        fetch, _ = ask(up, task)
        return 0 < result(up, fetch)["progress"] < 100 or (name == "ark" and fetch.outcome == "ok")

    eventually(moving, timeout=10)


@pytest.mark.parametrize("name", PROVIDERS)
def test_errors_are_the_providers(simulate, name):
    up = simulate(name)
    task = up.add(duration=30)
    missing, _ = ask(up, "no-such-task")
    assert missing.outcome == "not_found"
    refused, answer = ask(up, task, key="sk-wrong")
    assert refused.outcome == "unauthorized" and answer.status_code == 401
    up.sim.faults.forbidden = 1.0
    assert ask(up, task)[0].outcome == "forbidden"
    up.sim.faults.forbidden = 0.0
    up.sim.faults.server_error = 1.0
    assert ask(up, task)[0].outcome == "error"


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_rate_limit_with_its_headers(simulate, name):
    up = simulate(name)
    task = up.add(duration=30)
    up.sim.faults.rate_limit = 1.0
    up.sim.faults.retry_after = "3"
    limited, answer = ask(up, task)
    assert (limited.outcome, limited.retry_after) == ("rate_limited", 3.0)
    assert answer.headers["retry-after"] == "3"
    up.sim.faults.retry_after = None
    limited, answer = ask(up, task)
    assert limited.outcome == "rate_limited" and "retry-after" not in answer.headers
    # Replicate says in its body when the limit resets; the others say nothing.
    assert limited.retry_after == (1.0 if name == "replicate" else None)


@pytest.mark.parametrize("name", PROVIDERS)
def test_the_providers_own_rate_limit(simulate, name):
    up = simulate(name)
    task = up.add(duration=30)
    up.sim.faults.per_second = 1.0
    outcomes = [ask(up, task)[0].outcome for _ in range(6)]
    assert outcomes[0] == "ok" and "rate_limited" in outcomes


def test_runway_refuses_a_request_without_its_version(simulate):
    up = simulate("runway")
    task = up.add(duration=30)
    answer = httpx.get(
        f"{up.url}/v1/tasks/{task}", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}
    )
    assert answer.status_code == 400 and "X-Runway-Version" in answer.json()["error"]
    assert ask(up, task)[0].outcome == "ok"


def test_replicate_takes_its_older_token_scheme(simulate):
    up = simulate("replicate")
    task = up.add(duration=30)
    answer = httpx.get(
        f"{up.url}/v1/predictions/{task}", headers={"Authorization": f"Token {UPSTREAM_KEY}"}
    )
    assert answer.status_code == 200 and answer.json()["status"] in ("starting", "processing")


@pytest.mark.parametrize("name", PROVIDERS)
def test_admin_routes_drive_every_family_alike(simulate, name):
    up = simulate(name)
    made = httpx.post(f"{up.url}/_sim/tasks", json={"duration": 30, "queued": 0})
    assert made.status_code == 200
    body = made.json()
    task = body.get("id") or body["data"]["task_id"]
    assert ask(up, task)[0].outcome == "ok"
    httpx.post(f"{up.url}/_sim/faults", json={"server_error": 1.0})
    assert ask(up, task)[0].outcome == "error"
    httpx.post(f"{up.url}/_sim/key", json={"api_key": "sk-new"})
    assert ask(up, task)[0].outcome == "unauthorized"
    stats = httpx.get(f"{up.url}/_sim/stats").json()
    assert stats["polls"][task] == 3 and stats["requests"] >= 3


def test_the_command_plays_a_family(tmp_path):
    from tests.test_operator import bare_env
    from tests.test_process import COMMAND, Proc

    port = free_port()
    command = [COMMAND, "simulate-upstream", "--family", "runway", "--port", str(port)]
    proc = Proc([*command, "--api-key", UPSTREAM_KEY], bare_env(), port, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        made = eventually(lambda: _posted(f"{url}/_sim/tasks", {"duration": 30}))
        up = SimpleNamespace(url=url, family="runway")
        fetch, answer = ask(up, made["id"])
        assert fetch.outcome == "ok" and answer.json()["status"] in ("PENDING", "RUNNING")
        assert ask(up, "no-such-task")[0].outcome == "not_found"
    finally:
        assert proc.stop() == 0


def _posted(url, body):
    try:
        return httpx.post(url, json=body, timeout=1).json()
    except httpx.HTTPError:
        return None
