"""Public identifiers: a prefix and a time-ordered, random 26-character body."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_id(prefix: str) -> str:
    """A new id such as ``reg_01jd…``; ids made later sort after earlier ones."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"


def pattern(prefix: str) -> str:
    """A regular expression for the ids made with ``prefix`` (for the OpenAPI schema)."""
    return f"^{prefix}_[{_ALPHABET}]{{26}}$"


def looks_like(prefix: str, value: str) -> bool:
    """Whether ``value`` has the shape of an id made by :func:`new_id` with ``prefix``."""
    head, sep, body = value.partition("_")
    return head == prefix and sep == "_" and len(body) == 26 and all(c in _ALPHABET for c in body)
