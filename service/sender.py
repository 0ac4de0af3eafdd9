"""The lean path of the two hot requests, polls and webhook attempts: a request to a
URL known in full goes straight below an ``httpx.AsyncClient``'s transport, to our own
HTTP/1.1 client (``wire.Pool``: webhooks, and polls of the service's upstream clients)
or to the aiohttp session (``transport.RawTargetTransport``), its headers built once,
and comes back as a ``Reply`` (status, headers, a body read as far as wanted), with no
``httpx.Request`` or ``httpx.Response`` around it. httpx's client layer, then its
models, cost about a third, then an eighth, of a webhook's CPU (bench/README.md, issue
21). The request-target goes as built and failures are named as ``transport.Transport``
names them (see service/transport.py).
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Iterable

import aiohttp
import httpx
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from service import transport, wire
from service.wire import Reply as Reply


class _Session(Reply):
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        super().__init__(response.status, response.headers)
        self._response = response

    async def read(self, size: int) -> bytes:
        try:
            return await self._response.content.read(size)
        except (aiohttp.ClientError, OSError) as exc:
            raise transport.failure(exc) from exc

    async def close(self) -> None:
        try:
            self._response.release()
            await self._response.wait_for_close()
        except (aiohttp.ClientError, OSError) as exc:
            raise transport.failure(exc) from exc


class _Streamed(Reply):
    __slots__ = ("_chunks", "_left", "_response")

    def __init__(self, response: httpx.Response) -> None:
        headers = CIMultiDict(response.headers.multi_items())
        super().__init__(response.status_code, CIMultiDictProxy(headers))
        self._response = response
        # The stream itself: a mock's answer, read already, still holds its bytes there.
        assert isinstance(response.stream, httpx.AsyncByteStream)
        self._chunks = aiter(response.stream)
        self._left = b""

    async def read(self, size: int) -> bytes:
        if not self._left:
            self._left = await anext(self._chunks, b"")
        found, self._left = self._left[:size], self._left[size:]
        return found

    async def close(self) -> None:
        await self._response.aclose()


class Sender:
    """Sends requests to absolute URLs below an ``httpx.AsyncClient``'s client layer:
    the URL is taken as given (no base to merge), with no cookies of httpx's, auth
    flow, redirects (a 3xx is an answer) or event hooks, and the client's default
    headers. Over ``wire.Transport`` (or a ``transport.RawTargetTransport`` given a
    pool) a request goes straight to its pool; over ``transport.RawTargetTransport``
    without one straight to its aiohttp session; over any other transport (a test's
    ``httpx.MockTransport``) through that transport as an ``httpx.Request``."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.transport = client._transport
        # Sent as they always went (through httpx.Headers): names in lower case.
        self._defaults = {name.lower(): value for name, value in client.headers.multi_items()}

    @classmethod
    def of(cls, client: httpx.AsyncClient) -> Sender:
        """The sender of ``client`` (its own transport, not its mounts or proxies); one
        per client, made on first use."""
        found = _senders.get(client)
        if found is None:
            found = _senders[client] = cls(client)
        return found

    async def send(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Iterable[tuple[str, str]] = (),
        content: bytes | None = None,
        target: str | None = None,
    ) -> Reply:
        """The answer to one request to the absolute ``url``, its body unread.
        ``headers`` replace the defaults of the same name (without regard to case);
        ``timeout`` (seconds) bounds connecting, each read and the wait for a
        connection; ``target`` is the request-target to send byte for byte
        (``transport.target(url)``), else the URL's own. Raises the httpx error that names a
        failure (see the module docstring)."""
        merged = dict(self._defaults)
        for name, value in headers:
            merged[name.lower()] = value
        below = self.transport
        pool = below.pool if isinstance(below, _POOLED) else None
        if pool is not None:
            origin, rest = _split(url)
            place = _place(origin)
            return await pool.request(
                method, place.scheme, place.host, place.port,
                self._target(url, rest, target), merged.items(), content, timeout,
            )  # fmt: skip
        if not isinstance(below, transport.RawTargetTransport):
            return await self._through(below, method, url, merged, content, timeout)
        try:
            response = await below.session().request(
                method, self._wire(url, target), headers=merged, data=content,
                allow_redirects=False, auto_decompress=False,
                timeout=transport.client_timeout(timeout, timeout, timeout),
            )  # fmt: skip
        except (aiohttp.ClientError, OSError) as exc:
            raise transport.failure(exc) from exc
        return _Session(response)

    @staticmethod
    async def _through(
        below: httpx.AsyncBaseTransport,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        timeout: float,
    ) -> Reply:
        extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        request = httpx.Request(
            method, url, headers=list(headers.items()), content=content, extensions=extensions
        )
        return _Streamed(await below.handle_async_request(request))

    def _wire(self, url: str, target: str | None) -> yarl.URL:
        """``transport.wire_url`` of ``url``, parsing with httpx only its origin, once: the
        request-target is ``target``, else the URL's own when httpx would send it
        unchanged (a plain path, as a status path is), else httpx's reading of it."""
        origin, rest = _split(url)
        prefix = _place(origin).prefix
        return yarl.URL(prefix + self._target(url, rest, target), encoded=True)

    @staticmethod
    def _target(url: str, rest: str, target: str | None) -> str:
        if target is not None:
            return target
        return rest if _PLAIN_PATH.fullmatch(rest) else httpx.URL(url).raw_path.decode()


class _Place:
    """An origin as httpx reads it: ``scheme://netloc`` (ASCII, no user info), and its
    scheme, host (IDNA, no brackets) and port (None: the scheme's)."""

    __slots__ = ("host", "port", "prefix", "scheme")

    def __init__(self, parsed: httpx.URL) -> None:
        self.scheme = parsed.scheme
        self.host = parsed.raw_host.decode("ascii")
        self.port = parsed.port
        self.prefix = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"


@functools.lru_cache(maxsize=4096)
def _place(origin: str) -> _Place:
    """An origin parsed once: most requests go to origins sent to before."""
    return _Place(httpx.URL(origin))


_POOLED = (wire.Transport, transport.RawTargetTransport)  # transports that may have a pool

# A path httpx sends as written: unreserved characters and %XX escapes only, no query,
# no "." or ".." segment (which it would drop).
_PLAIN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})*)+")


@functools.lru_cache(maxsize=4096)
def _split(url: str) -> tuple[str, str]:
    """An absolute URL's origin (scheme and authority) and the rest, as written."""
    start = url.find("://") + 3
    ends = [i for i in (url.find("/", start), url.find("?", start), url.find("#", start)) if i >= 0]
    end = min(ends, default=len(url))
    return url[:end], url[end:]


_senders: weakref.WeakKeyDictionary[httpx.AsyncClient, Sender] = weakref.WeakKeyDictionary()
