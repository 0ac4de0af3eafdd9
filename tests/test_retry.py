import email.utils
import random

import pytest

from service import retry
from service.config import DEFAULT_RETRY_SCHEDULE


@pytest.mark.parametrize(
    ("failed", "low", "high"),
    [(1, 5, 5.5), (2, 300, 330), (9, 86400, 95040)],
)
def test_delivery_wait_follows_schedule_with_jitter(failed, low, high):
    wait = retry.delivery_wait(failed, DEFAULT_RETRY_SCHEDULE, rng=random.Random(1))
    assert wait is not None and low <= wait <= high


def test_delivery_dead_after_last():
    assert retry.delivery_wait(10, DEFAULT_RETRY_SCHEDULE) is None
    assert retry.delivery_wait(1, ()) is None


@pytest.mark.parametrize(
    ("retry_after", "expected_min", "expected_max"),
    [(None, 5, 5.5), (2.0, 5, 5.5), (100.0, 100, 100), (99999.0, 3600, 3600)],
)
def test_retry_after_only_lengthens_and_is_capped(retry_after, expected_min, expected_max):
    wait = retry.delivery_wait(1, (5.0,), retry_after, rng=random.Random(0))
    assert wait is not None and expected_min <= wait <= expected_max


def test_parse_retry_after():
    now = 1_800_000_000.0
    assert retry.parse_retry_after("120", now) == 120
    assert retry.parse_retry_after(" 1.5 ", now) == 1.5
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry.parse_retry_after(date, now) == pytest.approx(30, abs=1)
    assert retry.parse_retry_after("soon", now) is None
    assert retry.parse_retry_after("", now) is None
    assert retry.parse_retry_after(None, now) is None
    assert retry.parse_retry_after("-5", now) == 0.0
    assert retry.parse_retry_after("100000", now) == retry.RETRY_AFTER_CAP


def test_poll_backoff_grows_and_is_bounded():
    rng = random.Random(3)
    waits = [retry.poll_backoff(n, 5, 30, rng) for n in range(1, 12)]
    assert all(2.5 <= w <= 120 for w in waits)
    assert max(waits[-3:]) > waits[0]
