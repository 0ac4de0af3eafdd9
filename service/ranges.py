"""Byte ranges of a download (RFC 9110 section 14): reading a ``Range`` header against
the size of what is served. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes ``first`` to ``last`` (inclusive) of ``size``."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


class Unsatisfiable(Exception):
    """The range lies outside what is served (416)."""


def parse(header: str | None, size: int) -> Span | None:
    """The one range a ``Range`` header asks for; None to serve the whole (no header, a
    form this does not serve, such as several ranges, or one that is malformed: a server
    may ignore those). Raises Unsatisfiable for a range outside ``size`` bytes."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash or not (first_text.isdigit() or first_text == ""):
        return None
    if not (last_text.isdigit() or last_text == "") or first_text == last_text == "":
        return None
    if first_text == "":  # the last N bytes
        count = int(last_text)
        if count == 0 or size == 0:
            raise Unsatisfiable
        return Span(max(0, size - count), size - 1, size)
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if last_text and int(last_text) < first:
        return None  # invalid: ignored, as the RFC says
    if first >= size:
        raise Unsatisfiable
    return Span(first, last, size)
