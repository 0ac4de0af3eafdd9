"""A snapshot: an upstream answer kept as clean UTF-8 JSON text, whatever bytes came in.

Upstreams and the proxies in front of them send byte-order marks, UTF-16, bytes that
are not UTF-8, lone surrogate escapes and ``NaN``. What status-proxy stores, serves and
signs must be JSON that strict parsers (RFC 8259) accept, so every answer is decoded
leniently here and, when its text was not already clean, encoded again.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from dataclasses import dataclass
from typing import Any

# Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS = (
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
)
# A surrogate left in a decoded string is a lone one: JSON escapes of a valid pair join.
_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate in a text, or the escape of one (of a valid pair too: a doubt, not a fault).
_SURROGATE_ANYWHERE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")


@dataclass(frozen=True, slots=True)
class Parsed:
    """A JSON value and its clean text (the bytes as sent when they were clean already)."""

    value: Any
    text: str


def parse(raw: bytes | str) -> Parsed | None:
    """Decode an answer leniently; None when it is not JSON at all."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    text, strict = _decode(data)
    odd: list[str] = []
    try:
        value = json.loads(text, parse_constant=lambda word: odd.append(word))
    except (ValueError, RecursionError):
        return None
    cleaned, changed = _sanitise(value)
    if strict and not odd and not changed:
        return Parsed(value, text)
    return Parsed(cleaned, dumps(cleaned))


def clean(raw: bytes | str | None) -> str | None:
    """The clean JSON text of an answer or stored snapshot; None when it is not JSON."""
    if raw is None:
        return None
    if isinstance(raw, str) and _clean_already(raw):
        return raw  # what parse() would give, without building and walking the value
    parsed = parse(raw)
    return parsed.text if parsed is not None else None


def _clean_already(text: str) -> bool:
    """Whether parse() would keep the text as it is: strict JSON with no mark, no NUL
    where encodings are guessed, no surrogate (escaped or not) and no number that is
    not finite. False sends a text through parse(), so a doubt costs time, not care."""
    if text[:1] == "\ufeff" or "\x00" in text[:4] or _SURROGATE_ANYWHERE.search(text):
        return False
    try:
        _STRICT.decode(text)
    except (ValueError, RecursionError):
        return False
    return True


def _refuse(word: str) -> Any:
    raise ValueError(word)


def _finite(word: str) -> float:
    number = float(word)
    if not math.isfinite(number):
        raise ValueError(word)
    return number


_STRICT = json.JSONDecoder(parse_constant=_refuse, parse_float=_finite)  # built once


def load(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored snapshot as an object; None for anything else. Never raises."""
    if raw is None:
        return None
    parsed = parse(raw)
    return parsed.value if parsed is not None and isinstance(parsed.value, dict) else None


def dumps(value: Any) -> str:
    """Compact UTF-8 JSON text of a value that holds no surrogates or NaN."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _decode(data: bytes) -> tuple[str, bool]:
    """The text of the bytes, and whether they were plain UTF-8 with no mark."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, "replace"), False
    encoding = json.detect_encoding(data)  # UTF-16/32 without a mark, by its zero bytes
    if encoding != "utf-8":
        return data.decode(encoding, "replace"), False
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), False


def _sanitise(value: Any) -> tuple[Any, bool]:
    """Lone surrogates become U+FFFD and NaN or infinities null; whether anything changed."""
    if isinstance(value, str):
        fixed = _SURROGATE.sub("\ufffd", value)
        return fixed, fixed != value
    if isinstance(value, float) and not math.isfinite(value):
        return None, True
    if isinstance(value, list):
        items = [_sanitise(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    if isinstance(value, dict):
        changed = False
        result: dict[str, Any] = {}
        for key, item in value.items():
            new_key, key_changed = _sanitise(key)
            new_item, item_changed = _sanitise(item)
            result[new_key] = new_item
            changed = changed or key_changed or item_changed
        return result, changed
    return value, False
