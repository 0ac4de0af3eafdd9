"""status-proxy's own HTTP/1.1 client for webhook attempts: asyncio protocols and
httptools' parser, with keep-alive connections per origin.

A webhook attempt is one small POST of bytes built in full to a URL known in full; the
answer matters for its status line, a few headers and the start of its body. aiohttp's
client spent about two fifths of a delivered webhook's CPU around that (bench/README.md,
issue 21): request and response objects, its connector's bookkeeping, a stream reader.
Here a request is one write of bytes, and the answer is the parser's callbacks into a
buffer.

What it does, as RFC 9112 says a client does: HTTP/1.1 over TCP or TLS (the system's
trusted roots, the host name checked); one request at a time on a connection, kept for
the next when the answer came whole and neither side said ``close``; a body framed by
Content-Length, chunked, or the end of the connection; 1xx answers skipped. A request
sent on a kept connection that the peer had closed meanwhile goes once more on a new
one (nothing of an answer had come). What it does not: redirects (a 3xx is the answer),
decompression, proxies, cookies, HTTP/2.

Failures are the httpx errors ``transport.Transport`` raises for the same thing, with
the same words where they are ours (see service/transport.py): ``ConnectError`` for a
name that does not resolve, a refused connection or a failed TLS handshake,
``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError`` for a peer that hung up
without an answer or spoke no HTTP, ``ReadError`` for a body cut short.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import cast

import httptools
import httpx
from multidict import CIMultiDict, CIMultiDictProxy

# Resolves (host, port) to the addresses to try, each (family, address, port); raises
# OSError with the words to show when the name may not be used or does not resolve.
Resolve = Callable[[str, int], Awaitable[list[tuple[int, str, int]]]]

KEEP_IDLE = 15.0  # seconds a kept connection waits for its next request
MAX_HEAD = 64 * 1024  # bytes of an answer's status line and headers
MAX_FIELDS = 256  # header lines of an answer
HIGH_WATER = 256 * 1024  # body bytes buffered before reading from the socket pauses


async def system_resolve(host: str, port: int) -> list[tuple[int, str, int]]:
    """The system resolver's TCP addresses of ``host``, in its order."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise OSError(f"{host} does not resolve ({_words(exc)})") from exc
    return [(family, str(address[0]), int(address[1])) for family, _, _, _, address in infos]


def _words(exc: BaseException) -> str:
    """What went wrong, in one line: a TLS failure's reason, an errno's words, or the
    error's own text."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        words = f"certificate verify failed: {exc.verify_message}"
    elif isinstance(exc, ssl.SSLError):
        words = exc.reason or str(exc)
    elif isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        words = os.strerror(exc.errno)
    elif isinstance(exc, OSError) and exc.strerror:
        words = exc.strerror
    else:
        words = str(exc)
    return " ".join(words.split()) or type(exc).__name__


class Reply:
    """An answer whose status line and headers have come, its body still unread: read
    it with ``read`` as far as wanted, then ``close`` it (the connection is kept for
    the next request when the whole body had come, else closed)."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: CIMultiDictProxy[str]) -> None:
        self.status = status
        self.headers = headers

    async def read(self, size: int) -> bytes:
        """At most ``size`` (> 0) bytes of the body as they come, as sent (no decoding);
        ``b""`` at its end. Raises the httpx error that names a failure."""
        raise NotImplementedError

    async def close(self) -> None:
        """Give the connection back, or close it when the body has not all come."""
        raise NotImplementedError

    def whole(self) -> bytes | None:
        """The rest of the body when all of it has come already (taken, so that the
        next ``read`` is ``b""``), else None; it never waits."""
        return None


class _Origin:
    """Where requests to one ``scheme://host:port`` go, and its kept connections."""

    __slots__ = ("host", "host_header", "idle", "port", "tls")

    def __init__(self, scheme: str, host: str, port: int | None) -> None:
        self.tls = scheme == "https"
        self.host = host  # ASCII (IDNA), an IPv6 address without its brackets
        default = 443 if self.tls else 80
        self.port = port or default
        # An IPv6 zone (fe80::1%eth0) means something on this host only (RFC 6874).
        bracketed = f"[{host.split('%', 1)[0]}]" if ":" in host else host
        self.host_header = bracketed if self.port == default else f"{bracketed}:{self.port}"
        self.idle: deque[_Connection] = deque()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer in progress on it."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # RFC 9112 asks a client to take obs-fold (5.2) and may take a bare LF (2.2);
        # neither touches framing: Content-Length and chunked stay strict.
        self.parser.set_dangerous_leniencies(
            lenient_headers=True, lenient_optional_cr_before_lf=True
        )
        self.closed = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.raw: list[tuple[str, str]] = []
        self.framed = False  # Content-Length or chunked: the body does not end at EOF
        self.answered = False  # any byte of an answer has come
        self.head_size = 0  # bytes of the answer's head so far
        self.refusal: str | None = None  # why a callback stopped the parser
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False  # read at the end of the answer (the parser forgets it)
        self.failed: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.head is None or self.complete:
            self._close()  # bytes no request asked for: nothing after them can be trusted
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
            return
        except httptools.HttpParserError as exc:
            if self.complete:  # a second answer began (on_message_begin stopped it)
                self._close()
            elif self.refusal is not None:
                self._fail(httpx.RemoteProtocolError(self.refusal))
            else:
                words = _words(exc)
                self._fail(httpx.RemoteProtocolError(f"not an HTTP/1.1 answer ({words})"))
            return
        if self.status == 0 and not self.closed:  # its head goes on: bounded
            self.head_size += len(data)
            if self.head_size > MAX_HEAD:
                self._fail(httpx.RemoteProtocolError(f"the answer's head passed {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.head is None or self.complete:
            return
        if not self.head.done():
            if not self.answered:
                self._fail(_HungUp("the server closed the connection without an answer"))
            elif exc is None:
                self._fail(httpx.RemoteProtocolError("the server closed the connection mid-head"))
            else:
                self._fail(httpx.ReadError(_words(exc)))
        elif exc is None and not self.framed:
            self.complete = True  # a body that ends with the connection
            self._wake()
        else:
            why = _words(exc) if exc is not None else "the connection closed"
            self._fail(httpx.ReadError(f"{why} before the whole body came"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Stop  # nothing past the answer is read

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1")
        lower = key.lower()
        if lower == "content-length" or lower == "transfer-encoding":
            self.framed = True
        if len(self.raw) >= MAX_FIELDS:
            self.refusal = f"the answer has more than {MAX_FIELDS} header lines"
            raise _Stop
        self.raw.append((key, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self.raw.clear()
            self.framed = False
            return
        self.status = status
        if status in (204, 304):
            self.framed = True
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        self.framed = True
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # ours

    def _fail(self, error: Exception) -> None:
        if self.failed is None:
            self.failed = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        self._wake()
        self._close()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.failed is None


class _Stop(Exception):
    """Raised in a parser callback to stop the parser (it raises HttpParserCallbackError)."""


class _HungUp(httpx.RemoteProtocolError):
    """No byte of an answer came before the peer closed: on a kept connection, the
    request may go again on a new one."""


class _Answer(Reply):
    __slots__ = ("_connection", "_pool", "_timeout")

    def __init__(self, connection: _Connection, pool: Pool, timeout: float) -> None:
        super().__init__(connection.status, CIMultiDictProxy(CIMultiDict(connection.raw)))
        self._connection: _Connection | None = connection
        self._pool = pool
        self._timeout = timeout

    async def read(self, size: int) -> bytes:
        connection = self._connection
        if connection is None:
            return b""
        while not connection.body:
            if connection.complete:
                return b""
            if connection.failed is not None:
                raise connection.failed
            await _wait(connection, self._timeout)
        chunk = connection.body.popleft()
        if len(chunk) > size:
            connection.body.appendleft(chunk[size:])
            chunk = chunk[:size]
        connection.buffered -= len(chunk)
        if connection.paused and connection.buffered < HIGH_WATER // 2:
            connection.paused = False
            if connection.transport is not None:
                connection.transport.resume_reading()
        return chunk

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection)

    def whole(self) -> bytes | None:
        connection = self._connection
        if connection is None:
            return b""
        if not connection.complete:
            return None
        body = b"".join(connection.body)
        connection.body.clear()
        connection.buffered = 0
        return body


async def _wait(connection: _Connection, timeout: float) -> None:
    """Until the connection has more to say, at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    waiter = connection.waiter = loop.create_future()
    timer = loop.call_later(timeout, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
        connection.waiter = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("the answer took too long"))


class Pool:
    """Kept connections per origin, at most ``limit`` requests in flight in all (a
    request waits for a free place within its timeout). ``resolve`` gives the addresses
    to connect to (the callback guard's resolver vets each one: no other address is
    ever connected to); ``tls`` is the TLS context of https origins."""

    ORIGINS = 4096  # origins kept; the oldest half is dropped when full

    def __init__(
        self,
        limit: int = 100,
        resolve: Resolve = system_resolve,
        tls: ssl.SSLContext | None = None,
        keep_idle: float = KEEP_IDLE,
    ) -> None:
        self.limit = limit
        self.resolve = resolve
        self.tls = tls
        self.keep_idle = keep_idle
        self._free = limit
        self._queue: deque[asyncio.Future[None]] = deque()
        self._origins: dict[tuple[str, str, int | None], _Origin] = {}

    async def request(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int | None,
        target: str,
        headers: Iterable[tuple[str, str]],
        content: bytes | None,
        timeout: float,
    ) -> Reply:
        """The answer to one request, its body unread (close it when done). ``host``
        is ASCII, an IPv6 address without brackets; ``port`` None for the scheme's;
        ``target`` the request-target as it goes; ``timeout`` (seconds) bounds the
        wait for a place, connecting, and each read. Raises the httpx errors of the
        module docstring."""
        origin = self._origin(scheme, host, port)
        head = _head(method, target, origin.host_header, headers, content)
        await self._acquire(timeout)
        try:
            connection = await self._exchange(origin, head, timeout)
        except BaseException:
            self._give_back()
            raise
        return _Answer(connection, self, timeout)

    async def _exchange(self, origin: _Origin, head: bytes, timeout: float) -> _Connection:
        while True:
            connection = self._kept(origin)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(origin, timeout)
            try:
                return await self._ask(connection, head, timeout)
            except _HungUp as exc:
                if not reused:  # no kept connection closed meanwhile: the receiver's doing
                    raise httpx.RemoteProtocolError(str(exc)) from None

    async def _ask(self, connection: _Connection, head: bytes, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        connection._reset()
        connection.head = loop.create_future()
        assert connection.transport is not None
        connection.transport.write(head)
        timer = loop.call_later(timeout, _expire, connection.head)
        try:
            await connection.head
        except BaseException:
            connection._close()
            raise
        finally:
            timer.cancel()
        return connection

    def _kept(self, origin: _Origin) -> _Connection | None:
        while origin.idle:
            connection = origin.idle.pop()  # the most recent: the least likely closed
            if connection.idle_timer is not None:
                connection.idle_timer.cancel()
                connection.idle_timer = None
            if not connection.closed:
                return connection
        return None

    async def _connect(self, origin: _Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls() if origin.tls else None
        last: Exception | None = None
        try:
            async with asyncio.timeout(timeout):
                try:
                    addresses = await self._addresses(origin)
                except OSError as exc:
                    raise httpx.ConnectError(_words(exc)) from exc
                for family, address, port in addresses:
                    try:
                        _, protocol = await loop.create_connection(
                            lambda: _Connection(origin),
                            address, port, family=family, ssl=tls,
                            server_hostname=origin.host if tls else None,
                        )  # fmt: skip
                    except (OSError, ssl.SSLError) as exc:
                        last = exc
                        continue
                    return protocol
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connecting took too long: {origin.host}:{origin.port}"
            ) from exc
        where = f"{origin.host}:{origin.port}"
        if last is None:
            raise httpx.ConnectError(f"{origin.host} does not resolve (no address)")
        raise httpx.ConnectError(f"cannot connect to {where}: {_words(last)}") from last

    async def _addresses(self, origin: _Origin) -> list[tuple[int, str, int]]:
        try:  # an address needs no lookup (the guard vets those before sending)
            literal = ipaddress.ip_address(origin.host)
        except ValueError:
            return await self.resolve(origin.host, origin.port)
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return [(family, origin.host, origin.port)]

    def _tls(self) -> ssl.SSLContext:
        if self.tls is None:
            self.tls = ssl.create_default_context()
        return self.tls

    def _origin(self, scheme: str, host: str, port: int | None) -> _Origin:
        key = (scheme, host, port)
        found = self._origins.get(key)
        if found is None:
            if len(self._origins) >= self.ORIGINS:
                for old in list(self._origins)[: self.ORIGINS // 2]:
                    for connection in self._origins.pop(old).idle:
                        connection._close()
            found = self._origins[key] = _Origin(scheme, host, port)
        return found

    async def _acquire(self, timeout: float) -> None:
        if self._free > 0 and not self._queue:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        placed = False
        try:
            async with asyncio.timeout(timeout):
                await waiter
            placed = True
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connecting took too long: all {self.limit} connections busy"
            ) from exc
        finally:
            if not placed:  # timed out or cancelled: a place handed over goes on
                if waiter.done() and not waiter.cancelled():
                    self._give_back()
                else:
                    waiter.cancel()
                    if waiter in self._queue:
                        self._queue.remove(waiter)

    def _give_back(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _release(self, connection: _Connection) -> None:
        if connection.reusable():
            connection._reset()
            origin = connection.origin
            if len(origin.idle) >= self.limit:
                origin.idle.popleft()._close()
            origin.idle.append(connection)
            loop = asyncio.get_running_loop()
            connection.idle_timer = loop.call_later(self.keep_idle, connection._close)
        else:
            connection._close()
        self._give_back()

    def close(self) -> None:
        """Close every kept connection."""
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop()._close()
        self._origins.clear()


def _head(
    method: str,
    target: str,
    host: str,
    headers: Iterable[tuple[str, str]],
    content: bytes | None,
) -> bytes:
    """The request's bytes: its head, then ``content`` (with its Content-Length)."""
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n"]
    for name, value in headers:
        if _unsafe(name) or _unsafe(value) or ":" in name:
            raise httpx.LocalProtocolError(f"header {name!r} cannot go on the wire")
        lines.append(f"{name}: {value}\r\n")
    if content is not None or method == "POST":
        lines.append(f"content-length: {len(content or b'')}\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("utf-8", "surrogateescape")
    return head + content if content else head


def _unsafe(text: str) -> bool:
    return "\r" in text or "\n" in text or "\0" in text


class Transport(httpx.AsyncBaseTransport):
    """``Pool`` under an ``httpx.AsyncClient``, for any request of bytes sent through
    the client; ``sender.Sender`` goes to ``pool`` directly. Requests carry no body
    stream (a streamed body is read whole first)."""

    def __init__(self, pool: Pool | None = None) -> None:
        self.pool = pool or Pool()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        seconds = max((v for v in timeout.values() if v is not None), default=5.0)
        url = request.url
        content = await request.aread()
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in (b"host", b"content-length", b"transfer-encoding")
        ]
        reply = await self.pool.request(
            request.method, url.scheme, url.raw_host.decode("ascii"), url.port,
            url.raw_path.decode("ascii"), headers, content, seconds,
        )  # fmt: skip
        return httpx.Response(
            reply.status,
            headers=list(reply.headers.items()),
            stream=_Body(reply),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self.pool.close()


class _Body(httpx.AsyncByteStream):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.reply.read(1 << 16):
            yield chunk

    async def aclose(self) -> None:
        await self.reply.close()
