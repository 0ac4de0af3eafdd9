"""The HTTP transport of every outgoing request: httpx's API over aiohttp, with the
request-target sent exactly as built.

aiohttp parses a URL given as text and re-quotes it (``%2F`` becomes ``/``, ``%7e``
becomes ``~``), so a receiver that checks the exact URL it handed out, or an upstream
path with an encoded segment, would see another URL. Here aiohttp gets a URL it takes
as already encoded: the path and query of the httpx URL, or the ``target`` extension
of the request when the caller has the bytes it must send (a callback URL as registered).
"""

from __future__ import annotations

import httpx
import yarl
from aiohttp import ClientSession, ClientTimeout
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

TARGET = "target"  # request extension: the request-target (path and query) to send, as text


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


def wire_url(request: httpx.Request) -> yarl.URL:
    """The URL aiohttp sends, taken as encoded so it is never re-quoted."""
    url = request.url
    path = request.extensions.get(TARGET) or url.raw_path.decode("ascii")
    return yarl.URL(f"{url.scheme}://{url.netloc.decode('ascii')}{path}", encoded=True)


class RawTargetTransport(AiohttpTransport):
    """``AiohttpTransport`` that sends the request-target unchanged."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        data: bytes | httpx.AsyncByteStream | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream  # type: ignore[assignment]
            request.headers.pop("transfer-encoding", None)  # aiohttp frames it
        with map_aiohttp_exceptions():
            response = await self.client.request(
                method=request.method,
                url=wire_url(request),
                headers=request.headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
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
