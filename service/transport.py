"""The HTTP transport of every outgoing request: httpx's API over aiohttp's I/O, with
the request-target sent exactly as built and failures named for what they are.

aiohttp parses a URL given as text and re-quotes it (``%2F`` becomes ``/``, ``%7e``
becomes ``~``), so a receiver that checks the exact URL it handed out, or an upstream
path with an encoded segment, would see another URL. Here aiohttp gets a URL it takes
as already encoded: the path and query of the httpx URL, or the request-target the
caller has the bytes of (a callback URL as registered, ``target``).

``sender.Sender`` sends the two hot requests, polls and webhook attempts, straight
through such a transport's aiohttp session, and names failures the same way
(``failure``).

httpx-aiohttp maps every aiohttp connection error to ``httpx.ConnectTimeout`` (its map
prefers the broader ``ClientConnectionError``), so a refused connection or a name that
does not resolve looked like a timeout: 504 to clients, ``timeout`` in the metrics and
"ConnectTimeout" in webhook attempts. Here each failure keeps its class:

- a name that does not resolve, a refused or unroutable connection: ``httpx.ConnectError``
- a connection that took too long: ``httpx.ConnectTimeout``; an answer that did:
  ``httpx.ReadTimeout``
- a peer that hung up or spoke no HTTP: ``httpx.RemoteProtocolError``; a broken read:
  ``httpx.ReadError``
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator

import aiohttp
import httpx
import yarl
from aiohttp import ClientSession, ClientTimeout
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

from service import wire


def target(url: str) -> str:
    """The request-target of an absolute URL as written: path and query byte for byte,
    no fragment, ``/`` for an empty path; only non-ASCII characters, which cannot go on
    the wire, are percent-encoded (as UTF-8)."""
    rest = url.split("#", 1)[0].split("://", 1)[-1]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    path_query = rest[cut:]
    if not path_query.startswith("/"):
        path_query = "/" + path_query
    return "".join(
        ch if ord(ch) < 0x80 else "".join(f"%{b:02X}" for b in ch.encode()) for ch in path_query
    )


def wire_url(url: httpx.URL, path: str | None = None) -> yarl.URL:
    """The URL aiohttp sends, taken as encoded so it is never re-quoted: ``url`` with
    ``path`` (a request-target) in place of its own path and query when given."""
    path = path or url.raw_path.decode("ascii")
    return yarl.URL(f"{url.scheme}://{url.netloc.decode('ascii')}{path}", encoded=True)


@functools.lru_cache(maxsize=64)
def client_timeout(connect: float | None, read: float | None, pool: float | None) -> ClientTimeout:
    """aiohttp's timeouts for httpx's (seconds, None for none), made once per set."""
    return ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)


class RawTargetTransport(AiohttpTransport):
    """``AiohttpTransport`` that sends the request-target unchanged. With a ``pool``,
    ``sender.Sender``'s requests (polls) go through that pool of our own HTTP/1.1
    client instead, and the aiohttp session serves the rest (the gateway's streams)."""

    pool: wire.Pool | None = None

    async def aclose(self) -> None:
        if self.pool is not None:
            self.pool.close()
        await super().aclose()

    def session(self) -> ClientSession:
        """The aiohttp session this transport sends through, made on first use."""
        if not isinstance(self.client, ClientSession):
            self.client = self.get_client()
        return self.client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self.session()
        timeout = request.extensions.get("timeout", {})
        data: bytes | httpx.AsyncByteStream | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream  # type: ignore[assignment]
            request.headers.pop("transfer-encoding", None)  # aiohttp frames it
        with map_aiohttp_exceptions():
            response = await session.request(
                method=request.method,
                url=wire_url(request.url),
                headers=request.headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=client_timeout(
                    timeout.get("connect"), timeout.get("read"), timeout.get("pool")
                ),
                server_hostname=request.extensions.get("sni_hostname"),
            ).__aenter__()
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response),
            request=request,
            extensions=extensions,
        )


# Already one of ours (or httpx's own, raised before any I/O): passed on as it is.
_KEPT = (httpx.TimeoutException, httpx.UnsupportedProtocol, httpx.ProxyError)


def describe(exc: BaseException) -> str:
    """One line for a failed connection: what happened and to what, never a header."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        reason = _reason(exc.os_error)
        # The callback guard's resolver already names the host and what is wrong with it.
        return reason if exc.host in reason else f"{exc.host} does not resolve ({reason})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientResponseError):
        return " ".join(exc.message.split())  # not the request, which carries our headers
    return " ".join(str(exc).split()) or type(exc).__name__


def _reason(error: OSError) -> str:
    # asyncio's refusals carry errno but no strerror ("Connect call failed (...)").
    words = error.strerror or (os.strerror(error.errno) if error.errno and error.errno > 0 else "")
    return " ".join((words or str(error) or type(error).__name__).split())


def classify(exc: BaseException) -> Exception:
    """The httpx error that says what an aiohttp failure (or a timeout) was."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(f"connecting took too long: {describe(exc)}")
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout("the answer took too long")
    if isinstance(exc, aiohttp.ClientConnectorError):  # DNS, refused, unreachable
        return httpx.ConnectError(describe(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(describe(exc))
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientOSError | OSError):
        return httpx.ReadError(describe(exc))
    return httpx.TransportError(describe(exc))


def failure(exc: aiohttp.ClientError | OSError) -> Exception:
    """The httpx error ``Transport`` raises for this aiohttp failure: ``classify``'s,
    but for a read that timed out and a URL aiohttp cannot send, named as
    httpx-aiohttp names them (with aiohttp's words)."""
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(str(exc))
    if isinstance(exc, aiohttp.NonHttpUrlClientError | aiohttp.InvalidUrlClientError):
        return httpx.UnsupportedProtocol(str(exc))
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return httpx.ProxyError(str(exc))
    return classify(exc)


def _remap(exc: Exception) -> Exception:
    if isinstance(exc, _KEPT) and not isinstance(exc, httpx.ConnectTimeout):
        return exc
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    if isinstance(exc, httpx.ConnectTimeout) and cause is None:
        return exc
    if isinstance(cause, aiohttp.ClientError | OSError | asyncio.TimeoutError):
        return classify(cause)
    return exc


class Transport(RawTargetTransport):
    """The raw-target transport, raising the httpx error that fits each failure."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError, OSError) as exc:
            raised = _remap(exc)
            if raised is exc:
                raise
            raise raised from exc
        response.stream = _Stream(response.stream)
        return response


class _Stream(httpx.AsyncByteStream):
    """The body, with failures while reading it remapped the same way."""

    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                yield chunk
        except (httpx.TransportError, aiohttp.ClientError, OSError) as exc:
            raised = _remap(exc)
            if raised is exc:
                raise
            raise raised from exc

    async def aclose(self) -> None:
        await self.inner.aclose()
