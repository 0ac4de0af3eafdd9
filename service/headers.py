"""Custom webhook headers: what a registration (or ``callback_headers`` on
``POST /v1/videos``) may ask status-proxy to send with each attempt.

Values are often credentials for the receiver, so no message here ever quotes one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

LIMIT = 10
VALUE_LIMIT = 1024

# RFC 9110 token: the characters a field name may have.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII and spaces (no tabs, no line breaks: nothing can start a new field).
_VALUE = re.compile(r"[\x20-\x7e]*")

# The message framing, the connection and our signature belong to status-proxy:
# Host, Content-*, Webhook-* and the hop-by-hop fields (RFC 9110 section 7.6.1), and
# Expect, which would change how the exchange itself runs.
_REFUSED = frozenset(
    {
        "host", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te",
        "trailer", "trailers", "upgrade", "proxy-authenticate", "proxy-authorization", "expect",
    }
)  # fmt: skip
_REFUSED_PREFIXES = ("content-", "webhook-")


def check(value: Any) -> dict[str, str]:
    """The headers as given, or ValueError saying which rule one breaks (never its value)."""
    if not isinstance(value, Mapping):
        raise ValueError("headers must be an object of header names to string values")
    if len(value) > LIMIT:
        raise ValueError(f"at most {LIMIT} custom headers are allowed")
    seen: set[str] = set()
    for name, text in value.items():
        _check_name(name)
        if name.lower() in seen:
            raise ValueError(f"header {name!r} is given twice")
        seen.add(name.lower())
        if not isinstance(text, str):
            raise ValueError(f"the value of header {name!r} must be a string")
        if len(text) > VALUE_LIMIT or not _VALUE.fullmatch(text):
            raise ValueError(
                f"the value of header {name!r} must be at most {VALUE_LIMIT} characters "
                "of visible ASCII and spaces"
            )
    return dict(value)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError("header names must be HTTP tokens (letters, digits, !#$%&'*+-.^_`|~)")
    lowered = name.lower()
    if lowered in _REFUSED or lowered.startswith(_REFUSED_PREFIXES):
        raise ValueError(f"header {name!r} is set by status-proxy and may not be given")


def same(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether two header sets are equal (names compare without case, as HTTP does)."""
    return {k.lower(): v for k, v in a.items()} == {k.lower(): v for k, v in b.items()}
