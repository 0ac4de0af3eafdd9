import pytest

from service import status, upstreams
from service.upstreams import openai_video


@pytest.mark.parametrize(
    ("video", "kind", "progress", "has_video"),
    [
        ({"status": "queued"}, "in_progress", None, False),
        ({"status": "pending", "progress": 0}, "in_progress", 0, False),
        ({"status": "submitted"}, "in_progress", None, False),
        ({"status": "processing", "progress": 40}, "in_progress", 40, False),
        ({"status": "IN_PROGRESS", "progress": "55%"}, "in_progress", 55, False),
        ({"status": "running", "progress": 12.7}, "in_progress", 12, False),
        ({"status": "NOT_START"}, "in_progress", None, False),
        ({"status": "completed", "video_url": "https://x/v.mp4"}, "completed", None, True),
        ({"status": "Succeeded", "video_url": "https://x/v.mp4"}, "completed", None, True),
        ({"status": "success", "video_url": ""}, "completed", None, False),
        ({"status": "failed"}, "failed", None, False),
        ({"status": "FAILURE"}, "failed", None, False),
        ({"status": "error"}, "failed", None, False),
        ({"status": "cancelled"}, "failed", None, False),
        ({"status": "canceled"}, "failed", None, False),
        ({"status": "expired"}, "failed", None, False),
        # Empty placeholders that some gateways send count as absent.
        (
            {"status": "processing", "video_url": "", "completed_at": 0,
             "error": {"message": "", "code": ""}},
            "in_progress", None, False,
        ),
        # An error beside a word that is not a failure does not end the task (Ali)...
        ({"status": "queued", "error": {"code": "boom", "message": "x"}}, "in_progress", None, False),
        ({"status": "unknown", "error": {"code": "Throttling", "message": "x"}},
         "in_progress", None, False),
        # ...but with no status at all it does (Sora's stored error body).
        ({"id": "task_1", "error": {"code": "moderation_blocked", "message": "x"}},
         "failed", None, False),
        # new-api's words and its flat task view.
        ({"status": "unknown", "progress": 0}, "in_progress", 0, False),
        ({"task_id": "task_1", "status": "SUCCESS", "progress": "100%", "fail_reason": ""},
         "completed", 100, False),
        ({"task_id": "task_1", "status": "FAILURE", "progress": "100%", "fail_reason": "nsfw"},
         "failed", 100, False),
        # The link wherever real upstreams put it.
        ({"status": "completed", "metadata": {"url": "https://ark/v.mp4"}}, "completed", None, True),
        ({"status": "completed", "meta_data": {"url": "https://ark/v.mp4"}}, "completed", None, True),
        ({"status": "completed", "metadata": {"video_url": "https://v"}}, "completed", None, True),
        ({"status": "completed", "url": "https://v"}, "completed", None, True),
        ({"status": "SUCCESS", "result_url": "https://v"}, "completed", None, True),
        ({"status": "succeeded", "content": {"video_url": "https://v"}}, "completed", None, True),
        ({"status": "succeeded", "output": ["https://v"]}, "completed", None, True),
        ({"status": "completed", "video_url": "", "metadata": {"url": "https://v"}},
         "completed", None, True),
        ({"status": ""}, "in_progress", None, False),
        ({}, "in_progress", None, False),
        ({"status": "processing", "progress": True}, "in_progress", None, False),
        ({"status": "processing", "progress": 250}, "in_progress", 100, False),
    ],
)  # fmt: skip
def test_read_normalises(video, kind, progress, has_video):
    reading = status.read(video)
    assert (reading.kind, reading.progress, reading.has_video) == (kind, progress, has_video)


@pytest.mark.parametrize(
    ("video", "url", "pending"),
    [
        ({"status": "completed", "video_url": "https://v"}, "https://v", False),
        ({"status": "completed", "video_url": ""}, None, True),
        ({"status": "completed", "video_url": None}, None, True),
        ({"status": "completed", "metadata": {"url": ""}}, None, True),
        ({"status": "completed", "metadata": {}}, None, False),
        ({"status": "completed", "progress": 100}, None, False),  # Sora through new-api
        ({"status": "completed", "output": []}, None, True),
        ({"status": "completed", "metadata": "not an object"}, None, False),
    ],
)  # fmt: skip
def test_link_found_pending_or_absent(video, url, pending):
    assert status.find_link(video) == (url, pending)


@pytest.mark.parametrize(
    ("body", "task_id", "is_video"),
    [
        ({"id": "task_1", "status": "queued"}, "task_1", True),
        ({"task_id": "task_1", "status": "SUCCESS"}, "task_1", True),
        ({"status": "queued"}, "task_1", True),
        ({"id": "task_1", "error": {"message": "blocked"}}, "task_1", True),
        ({"error": {"message": "upstream request timed out, please retry"}}, "task_1", False),
        ({"id": "task_2", "error": {"message": "x"}}, "task_1", False),
        # Another task's answer (a stray on a kept connection) is never this task's.
        ({"id": "task_2", "status": "completed"}, "task_1", False),
        ({"id": "task_2", "task_id": "task_2", "status": "completed"}, "task_1", False),
        ({"code": "success", "data": {"task_id": "task_2", "status": "SUCCESS"}}, "task_1", False),
        ({"id": "video_9", "task_id": "task_1", "status": "queued"}, "task_1", True),
        ({"id": "", "status": "queued"}, "task_1", True),  # octopusx's placeholders
        ({"code": "success", "data": None}, "task_1", False),
        ([], "task_1", False),
        (None, "task_1", False),
        ("<html>", "task_1", False),
    ],
)  # fmt: skip
def test_a_200_is_a_video_only_of_this_task(body, task_id, is_video):
    assert status.is_video_of(status.unwrap(body), task_id) is is_video


def test_the_success_wrapper_is_unwrapped():
    inner = {"task_id": "task_1", "status": "IN_PROGRESS", "progress": "50%"}
    assert status.unwrap({"code": "success", "message": "", "data": inner}) is inner
    assert status.unwrap({"code": "fail", "data": inner})["code"] == "fail"


@pytest.mark.parametrize(
    ("video", "result"),
    [
        ({"status": "completed", "metadata": {"url": "https://v"}},
         {"status": "completed", "progress": 100, "video_url": "https://v", "error": None}),
        ({"status": "in_progress", "progress": "50%"},
         {"status": "in_progress", "progress": 50, "video_url": None, "error": None}),
        ({"status": "FAILURE", "progress": "100%", "fail_reason": "the prompt was refused"},
         {"status": "failed", "progress": 100, "video_url": None,
          "error": {"code": "failure", "message": "the prompt was refused"}}),
        ({"id": "t", "error": {"code": "moderation_blocked", "message": "blocked"}},
         {"status": "failed", "progress": 0, "video_url": None,
          "error": {"code": "moderation_blocked", "message": "blocked"}}),
        ({"status": "unknown", "error": {"code": "Throttling", "message": "slow"}},
         {"status": "in_progress", "progress": 0, "video_url": None, "error": None}),
        (None, {"status": "in_progress", "progress": 0, "video_url": None, "error": None}),
    ],
)  # fmt: skip
def test_result_is_the_same_shape_for_every_answer(video, result):
    assert upstreams.result(openai_video.FAMILY, video) == result


def test_unknown_is_an_in_progress_word_and_not_warned_about(caplog):
    caplog.set_level("WARNING", logger="service.status")
    assert status.read({"status": "unknown"}).kind == "in_progress"
    assert not caplog.records


def test_unknown_status_logged_once(caplog):
    caplog.set_level("WARNING", logger="service.status")
    for _ in range(3):
        status.read({"status": "MYSTERY_WORD_7"})
    assert sum("MYSTERY_WORD_7" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("value", "absent"),
    [(None, True), ("", True), (0, True), ({}, True), ({"a": "", "b": 0}, True),
     ("x", False), (1, False), ({"a": "x"}, False), (False, False)],
)  # fmt: skip
def test_absent(value, absent):
    assert status.absent(value) is absent


def test_a_status_word_keeps_only_printable_characters():
    reading = status.read({"status": "queued\x00\n"})
    assert reading.raw_status == "queued" and reading.kind == "in_progress"
