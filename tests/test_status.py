import pytest

from service import status


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
        ({"status": "queued", "error": {"code": "boom", "message": "x"}}, "failed", None, False),
        ({"status": ""}, "in_progress", None, False),
        ({}, "in_progress", None, False),
        ({"status": "processing", "progress": True}, "in_progress", None, False),
        ({"status": "processing", "progress": 250}, "in_progress", 100, False),
    ],
)  # fmt: skip
def test_read_normalises(video, kind, progress, has_video):
    reading = status.read(video)
    assert (reading.kind, reading.progress, reading.has_video) == (kind, progress, has_video)


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
