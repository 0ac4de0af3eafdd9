"""A webhook receiver that misbehaves at the TCP and HTTP level, one way per path."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import Counter

CHUNK = b"x" * 65536
OFFER = 1 << 30  # bytes a flooding path offers; far more than anyone should read


class Rogue:
    """``/reset`` resets the connection, ``/flood`` streams a 1 GiB body, ``/endless`` a
    chunked body that never ends, ``/garbage`` answers without HTTP, ``/silent`` never
    answers; ``/slow`` answers 200 after 0.3 s (``peak`` counts the most requests it
    held at once); ``/flaky`` answers 503 while ``down`` holds, then 200; ``/echo`` refuses with 400, echoing the request head; ``/ok`` answers 200 at once, ``/trickle`` answers 200 then sends its small
    body a byte every half second, ``/cut`` answers 200 then resets mid-body.
    ``sent`` counts the body bytes each path got out before the client left; ``lines``
    keeps every request line exactly as it arrived."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.lines: list[bytes] = []
        self.heads: list[bytes] = []
        self.active = 0  # requests being answered now, on every path
        self.peak = 0
        self.down = True  # /flaky answers 503 while this holds, then 200
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Rogue:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())  # cancels and closes what is left when it returns

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.lines.append(head.split(b"\r\n", 1)[0])
            self.heads.append(head)
            # Read the body: closing a socket with unread data resets the connection,
            # which could reach the client before the answer does.
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and int(value) < 1 << 20:
                    await reader.readexactly(int(value))
            path = head.split(b" ", 2)[1].decode()
            self.requests[path] += 1
            mode = path.split("?")[0].strip("/").split("/")[0]  # /flood/v1/videos/x floods too
            await getattr(self, "_" + mode)(path, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _reset(self, path: str, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _flood(self, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % OFFER)
        await self._pour(path, writer)

    async def _endless(self, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await self._pour(path, writer, chunked=True)

    async def _garbage(self, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\xffnot http at all\r\n\r\n")
        await writer.drain()

    async def _ok(self, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()

    async def _echo(self, path: str, writer: asyncio.StreamWriter) -> None:
        body = b"refused, you sent: " + self.heads[-1]
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()

    async def _slow(self, path: str, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0.3)
            await self._ok(path, writer)
        finally:
            self.active -= 1

    async def _flaky(self, path: str, writer: asyncio.StreamWriter) -> None:
        if not self.down:
            return await self._ok(path, writer)
        writer.write(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    async def _trickle(self, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
        for _ in range(20):
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.write(b"x")
            self.sent[path] += 1

    async def _cut(self, path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.1)
        await self._reset(path, writer)

    async def _silent(self, path: str, writer: asyncio.StreamWriter) -> None:
        assert self._stop is not None
        await self._stop.wait()

    async def _pour(self, path: str, writer: asyncio.StreamWriter, chunked: bool = False) -> None:
        frame = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK
        while self.sent[path] < OFFER and not self._stop_requested():
            writer.write(frame)
            await writer.drain()  # raises once the client has gone
            self.sent[path] += len(CHUNK)

    def _stop_requested(self) -> bool:
        return self._stop is not None and self._stop.is_set()
