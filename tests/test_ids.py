"""Public identifiers: their digits, their order, their shape."""

import random
import time

from service import ids


def _digits(value: int) -> str:
    """Base 32 one digit at a time, the way the ids are defined."""
    out = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        out.append(ids._ALPHABET[digit])
    return "".join(reversed(out))


def test_the_digits_are_base_32_most_significant_first():
    rng = random.Random(21)
    values = [0, 1, 31, 32, 2**80, 2**128 - 1] + [rng.getrandbits(128) for _ in range(2000)]
    for value in values:
        assert ids.encode(value) == _digits(value)


def test_ids_made_later_sort_after_and_have_the_shape_they_advertise():
    first = ids.new_id("evt")
    time.sleep(0.002)
    second = ids.new_id("evt")
    assert first < second
    assert ids.looks_like("evt", first) and not ids.looks_like("att", first)
    assert len({ids.new_id("att") for _ in range(1000)}) == 1000
