"""A multipart/form-data body re-framed as it streams: some fields kept, the rest passed on.

Nothing here holds more than one chunk of a part, so a body of any size passes through
in constant memory."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

FIELD_LIMIT = 16 * 1024  # a kept field is a URL, a list or a few KiB of JSON


class Refused(ValueError):
    """The body cannot be relayed: malformed, or a kept field is unusable."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


class MultipartRelay:
    """Re-frames a multipart body as it streams in: the text fields whose names ``keep``
    accepts are kept (in ``fields``), every other part is passed on with the same boundary, and a
    fingerprint covers all parts (names, file names, types and bytes; not the boundary,
    which clients pick afresh on each retry)."""

    def __init__(self, boundary: bytes, keep: Callable[[str], bool]) -> None:
        self.boundary = boundary
        self.keep = keep
        self.fields: dict[str, list[str]] = {}
        self.ended = False
        self._hash = hashlib.sha256(b"multipart\0")
        self._out: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = self._value = b""
        self._keeping: str | None = None
        self._kept = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_size=16 * 1024,
        )

    @property
    def fingerprint(self) -> str:
        return self._hash.hexdigest()

    def feed(self, chunk: bytes) -> bytes:
        """Parse a chunk; answer the bytes to pass on so far."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise Refused(f"the multipart body is malformed: {exc}") from None
        out = b"".join(self._out)
        self._out.clear()
        return out

    def closing(self) -> bytes:
        if not self.ended:
            raise Refused("the multipart body ended before its closing boundary")
        return b"--" + self.boundary + b"--\r\n"

    def _feed_hash(self, *pieces: bytes) -> None:
        for piece in pieces:  # length-prefixed: no two part lists hash alike
            self._hash.update(b"%d:" % len(piece) + piece)

    def _part_begin(self) -> None:
        self._headers = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._name, self._value))
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        disposition = content_type = b""
        for name, value in self._headers:
            if name.lower() == b"content-disposition":
                disposition = value
            elif name.lower() == b"content-type":
                content_type = value
        _, options = parse_options_header(disposition)
        field = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._feed_hash(b"part", field.encode(), filename or b"\0", content_type)
        if self.keep(field):
            if filename is not None:  # sent on as a file, it would be silently ignored
                raise Refused(f"{field} must be a form field, not a file", field, 422)
            self._keeping, self._kept = field, bytearray()
            return
        self._keeping = None
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in self._headers)
        self._out.append(b"--" + self.boundary + b"\r\n" + lines + b"\r\n")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self._hash.update(chunk)
        if self._keeping is None:
            self._out.append(bytes(chunk))
            return
        self._kept += chunk
        if len(self._kept) > FIELD_LIMIT:
            raise Refused(f"{self._keeping} is too long", self._keeping, 422)

    def _part_end(self) -> None:
        self._feed_hash(b"end")
        if self._keeping is None:
            self._out.append(b"\r\n")
            return
        try:
            value = self._kept.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"{self._keeping} is not UTF-8 text", self._keeping) from None
        self.fields.setdefault(self._keeping, []).append(value)
        self._keeping = None

    def _end(self) -> None:
        self.ended = True
