"""Reading a Range header against the size served (RFC 9110 section 14)."""

import pytest

from service import ranges
from service.ranges import Span


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        (None, 100, None),
        ("", 100, None),
        ("bytes=0-9", 100, Span(0, 9, 100)),
        ("bytes=90-", 100, Span(90, 99, 100)),
        ("bytes=90-200", 100, Span(90, 99, 100)),  # the end is clipped to the size
        ("bytes=-10", 100, Span(90, 99, 100)),
        ("bytes=-500", 100, Span(0, 99, 100)),
        ("Bytes = 5-5", 100, Span(5, 5, 100)),
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole is served
        ("bytes=9-2", 100, None),  # malformed: ignored
        ("items=0-9", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes=-", 100, None),
        ("bytes=5", 100, None),
    ],
)
def test_ranges(header, size, span):
    assert ranges.parse(header, size) == span


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=-5", 0)]
)
def test_unsatisfiable(header, size):
    with pytest.raises(ranges.Unsatisfiable):
        ranges.parse(header, size)


def test_content_range():
    assert Span(90, 99, 100).content_range() == "bytes 90-99/100" and Span(90, 99, 100).length == 10
