"""Public identifiers: a prefix and a time-ordered, random 26-character body."""

from __future__ import annotations

import base64
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


# RFC 4648's base32 alphabet, written in ours: the same digits, other symbols.
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())


def new_id(prefix: str) -> str:
    """A new id such as ``reg_01jd…``; ids made later sort after earlier ones. The body
    is 128 bits (milliseconds since the epoch, then 80 random bits) in 26 base-32
    digits, most significant first."""
    return f"{prefix}_{encode((time.time_ns() // 1_000_000) << 80 | secrets.randbits(80))}"


def encode(value: int) -> str:
    """``value`` (0 to 2**128 - 1) as 26 base-32 digits of our alphabet, most
    significant first."""
    # 20 bytes are 32 digits; the first 6 are the 30 leading zero bits above 130.
    return base64.b32encode(value.to_bytes(20, "big"))[6:].translate(_FROM_RFC4648).decode()


def pattern(prefix: str) -> str:
    """A regular expression for the ids made with ``prefix`` (for the OpenAPI schema)."""
    return f"^{prefix}_[{_ALPHABET}]{{26}}$"


def looks_like(prefix: str, value: str) -> bool:
    """Whether ``value`` has the shape of an id made by :func:`new_id` with ``prefix``."""
    head, sep, body = value.partition("_")
    return head == prefix and sep == "_" and len(body) == 26 and all(c in _ALPHABET for c in body)
