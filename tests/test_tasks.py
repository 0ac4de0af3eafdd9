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
    return Fetch("ok", 200, body, video=video, text=body.decode())


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
    # Looked at again at the minimum, but no video.progress says "completed" meanwhile.
    assert first.values["interval"] == 5 and not first.progressed
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


def test_a_link_field_still_empty_waits_but_no_link_field_ends_at_once():
    pending = {"status": "completed", "metadata": {"url": ""}}
    assert tasks.decide(claimed(), ok(pending), NOW, SETTINGS).event is None
    sora = {"id": "t", "status": "completed", "progress": 100}  # no link field at all
    assert tasks.decide(claimed(), ok(sora), NOW, SETTINGS).event == "video.completed"
    doubao = {"status": "completed", "metadata": {"url": "https://ark/v.mp4"}}
    assert tasks.decide(claimed(), ok(doubao), NOW, SETTINGS).event == "video.completed"


def test_an_error_beside_a_running_status_does_not_end_the_task():
    ali = {"status": "unknown", "error": {"code": "Throttling", "message": "slow down"}}
    assert tasks.decide(claimed(), ok(ali), NOW, SETTINGS).event is None
    sora = {"id": "t", "error": {"code": "moderation_blocked", "message": "blocked"}}
    assert tasks.decide(claimed(), ok(sora), NOW, SETTINGS).event == "video.failed"


def test_a_403_on_one_task_is_treated_like_no_such_task():
    first = tasks.decide(claimed(), Fetch("forbidden", 403), NOW, SETTINGS)
    assert first.event is None and first.values["not_found_since"] == NOW
    late = tasks.decide(claimed(not_found_since=NOW - 21), Fetch("forbidden", 403), NOW, SETTINGS)
    assert late.give_up == "status_proxy_not_found"


def test_a_lasting_error_backs_off_then_gives_up_with_the_upstreams_words():
    lasting = Fetch("lasting", 501, code="not_implemented", message="not_implemented:doubao")
    first = tasks.decide(claimed(errors=2), lasting, NOW, SETTINGS)
    assert first.event is None and first.values["errors"] == 3
    assert first.values["not_found_since"] == NOW and first.values["next_poll_at"] > NOW + 5
    late = tasks.decide(claimed(not_found_since=NOW - 21), lasting, NOW, SETTINGS)
    assert late.event == "video.failed" and late.give_up == "status_proxy_upstream_error"
    data = json.loads(tasks.given_up_data("t", '{"id":"t"}', late.give_up, late.error))
    error = data["error"]
    assert error["code"] == "status_proxy_upstream_error"
    assert (error["upstream_code"], error["upstream_message"]) == (
        "not_implemented", "not_implemented:doubao",
    )  # fmt: skip
    assert "501" in error["message"] and "not_implemented:doubao" in error["message"]


def test_a_passing_error_never_gives_up_however_long():
    passing = Fetch("error", 500, code="get_task_failed")
    decision = tasks.decide(claimed(errors=50, not_found_since=None), passing, NOW, SETTINGS)
    assert decision.event is None and "not_found_since" not in decision.values


def test_given_up_data_reads_a_snapshot_with_a_byte_order_mark():
    data = json.loads(
        tasks.given_up_data("t", '\ufeff{"id":"t","progress":40}', "status_proxy_timeout")
    )
    assert data["progress"] == 40 and data["status"] == "failed"


@pytest.mark.parametrize(
    ("due_at", "expected"),
    [
        (NOW, NOW + 30),  # on time
        (NOW - 2, NOW + 28),  # answered 2 s late: the task keeps its cadence
        (NOW - 27, NOW + 5),  # never sooner than the minimum after this answer
        (NOW - 45, NOW + 30),  # more than a whole wait late: from now, no quick second poll
    ],
)
def test_the_next_poll_counts_from_when_this_one_was_due(due_at, expected):
    quiet = Settings(
        poll_interval_min=5, poll_interval_max=30, task_timeout=1000, not_found_grace=20
    )
    decision = tasks.decide(
        claimed(interval=30, due_at=due_at), ok({"status": "queued", "progress": 0}), NOW, quiet
    )
    assert decision.values["next_poll_at"] == pytest.approx(expected)
