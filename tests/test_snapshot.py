"""snapshot.clean: a text that is clean already comes back as it is, without parse()'s
walk; every other one is exactly what parse() makes of it."""

from __future__ import annotations

import pytest

from service import snapshot

TEXTS = [
    '{"id":"video_1","status":"queued","progress":0}',
    ' {"a": 1.5, "b": [1, 2, {"c": null}]} ',
    '"only a string"',
    "null",
    '{"a":1,"a":2}',
    '{"emoji":"\\uD83D\\uDE00"}',  # a valid pair, escaped: a doubt, parsed in full
    '{"a":"\\\\ud800"}',  # an escaped backslash, then letters
    "1" * 5000,  # past int's digit limit: not JSON here
    "\ufeff{}",
    '{"a":NaN}',
    '{"a":-Infinity}',
    '{"a":1e400}',
    '{"a":"\\ud800"}',
    '{"k\\udc00":1}',
    '{"a":"\ud800"}',
    "\x00{}",
    " \x00",
    "not json",
    "[" * 100_000 + "]" * 100_000,
]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_clean_is_what_parse_makes_of_a_text(text: str) -> None:
    parsed = snapshot.parse(text)
    assert snapshot.clean(text) == (parsed.text if parsed is not None else None)


def test_a_clean_text_is_returned_as_it_is() -> None:
    text = TEXTS[0]
    assert snapshot.clean(text) is text
    assert snapshot.clean('{"a":NaN}') == '{"a":null}'
