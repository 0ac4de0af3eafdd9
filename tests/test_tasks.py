import json

import pytest

from service import tasks
from service.config import Settings
from service.upstream import Fetch

SETTINGS = Settings(
    poll_interval_min=5, poll_interval_max=30, task_timeout=100, not_found_grace=20,
    empty_video_retries=2,
)  # fmt: skip
NOW = 10_000.0


def claimed(**fields):
    values = dict(
        task_id="t", lease_until=NOW + 60, interval=5.0, raw_status="queued", progress=0,
        not_found_since=None, errors=0, empty_completions=0, watch_started_at=NOW - 10,
        due_at=NOW,
    )  # fmt: skip
    values.update(fields)
    return tasks.Claimed(**values)


def ok(video):
    body = json.dumps(video).encode()
    return Fetch("ok", 200, body, video=video)


def test_unchanged_task_backs_off_towards_max():
    decision = tasks.decide(
        claimed(interval=20), ok({"status": "queued", "progress": 0}), NOW, SETTINGS
    )
    assert decision.values["interval"] == 30
    assert NOW + 5 <= decision.values["next_poll_at"] <= NOW + 30
    assert not decision.progressed and decision.event is None


def test_progress_tightens_to_min():
    decision = tasks.decide(
        claimed(interval=30), ok({"status": "processing", "progress": 10}), NOW, SETTINGS
    )
    assert decision.values["interval"] == 5 and decision.progressed
    assert NOW + 5 <= decision.values["next_poll_at"] <= NOW + 5.5


def test_completed_with_video_ends():
    decision = tasks.decide(
        claimed(), ok({"status": "succeeded", "video_url": "https://v"}), NOW, SETTINGS
    )
    assert decision.event == "video.completed" and decision.values["state"] == "ended"


def test_completed_without_video_is_polled_a_bounded_number_of_times():
    video = {"status": "completed", "video_url": ""}
    first = tasks.decide(claimed(), ok(video), NOW, SETTINGS)
    assert first.event is None and first.values["empty_completions"] == 1
    last = tasks.decide(claimed(empty_completions=2), ok(video), NOW, SETTINGS)
    assert last.event == "video.completed"


def test_failed_ends():
    decision = tasks.decide(claimed(), ok({"status": "FAILED"}), NOW, SETTINGS)
    assert decision.event == "video.failed" and decision.values["outcome"] == "failed"


def test_not_found_tolerated_for_grace_then_given_up():
    first = tasks.decide(claimed(), Fetch("not_found", 400), NOW, SETTINGS)
    assert first.event is None and first.values["not_found_since"] == NOW
    late = tasks.decide(claimed(not_found_since=NOW - 21), Fetch("not_found", 400), NOW, SETTINGS)
    assert late.event == "video.failed" and late.give_up == "status_proxy_not_found"


def test_found_again_clears_not_found():
    decision = tasks.decide(
        claimed(not_found_since=NOW - 5), ok({"status": "queued"}), NOW, SETTINGS
    )
    assert decision.values["not_found_since"] is None


@pytest.mark.parametrize("outcome", ["error", "timeout"])
def test_errors_back_off_the_task_without_failing_it(outcome):
    decision = tasks.decide(claimed(errors=3), Fetch(outcome), NOW, SETTINGS)
    assert decision.event is None and decision.values["errors"] == 4
    assert decision.values["next_poll_at"] > NOW


@pytest.mark.parametrize("outcome", ["rate_limited", "unauthorized"])
def test_global_problems_do_not_count_against_the_task(outcome):
    decision = tasks.decide(claimed(errors=0), Fetch(outcome), NOW, SETTINGS)
    assert decision.event is None and "errors" not in decision.values


def test_timeout_gives_up():
    decision = tasks.decide(
        claimed(watch_started_at=NOW - 101), ok({"status": "queued"}), NOW, SETTINGS
    )
    assert decision.event == "video.failed" and decision.give_up == "status_proxy_timeout"


def test_given_up_data_keeps_the_last_snapshot():
    data = json.loads(tasks.given_up_data("t", '{"id":"t","progress":40}', "status_proxy_timeout"))
    assert data["status"] == "failed" and data["progress"] == 40
    assert data["error"]["code"] == "status_proxy_timeout"
    bare = json.loads(tasks.given_up_data("t", None, "status_proxy_not_found"))
    assert bare["id"] == "t" and bare["error"]["code"] == "status_proxy_not_found"
