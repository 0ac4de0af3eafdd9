"""The lean path of polls and webhooks: straight to the aiohttp session (polls) or our
own HTTP/1.1 client (webhooks), byte for byte, each failure named as the transport
names it (real servers on 127.0.0.1)."""

import asyncio
import re

import httpx
import pytest

from service import sender, transport, wire
from service.config import Settings
from service.runtime import _upstream_client
from tests.harness import Canned, refused_port
from tests.test_transport import UNRESOLVABLE, Silent

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Answer: yes\r\n\r\n0123456789"


# Below the sender: aiohttp under the poll and gateway clients, ours under webhooks.
BELOW = {"aiohttp": transport.Transport, "wire": wire.Transport}


@pytest.fixture(params=sorted(BELOW))
def below(request) -> type[httpx.AsyncBaseTransport]:
    return BELOW[request.param]


async def _send(url: str, below: type[httpx.AsyncBaseTransport], **options) -> tuple[int, bytes]:
    """Send through a sender over ``below``; the status and whole body."""
    async with httpx.AsyncClient(transport=below()) as client:
        reply = await sender.Sender.of(client).send("GET", url, timeout=0.5, **options)
        chunks = []
        try:
            while chunk := await reply.read(1 << 20):
                chunks.append(chunk)
            return reply.status, b"".join(chunks)
        finally:
            await reply.close()


def test_a_sender_sends_the_target_and_headers_as_built(below):
    odd = "/a;v=1/b%2Fc/./d?sp=%2Fx&y=a+b&z=%7e&w=%41"

    async def go() -> tuple[Canned, list[bytes]]:
        async with (
            Canned(OK) as server,
            httpx.AsyncClient(transport=below()) as client,
        ):
            url = server.url + odd
            outgoing = sender.Sender.of(client)
            assert sender.Sender.of(client) is outgoing
            headers = [("User-Agent", "custom/1"), ("X-Key", "v")]
            reply = await outgoing.send(
                "POST", url, timeout=2, headers=headers, content=b"{}", target=transport.target(url)
            )
            assert reply.status == 200 and reply.headers["x-answer"] == "yes"
            chunks = [await reply.read(4), await reply.read(100), await reply.read(100)]
            await reply.close()
            return server, chunks

    server, chunks = asyncio.run(go())
    assert chunks == [b"0123", b"456789", b""]
    assert server.heads[0].split(b"\r\n")[0] == f"POST {odd} HTTP/1.1".encode()
    assert server.header(0, b"user-agent") == [b"custom/1"]  # the default replaced
    assert server.header(0, b"x-key") == [b"v"] and server.header(0, b"accept") == [b"*/*"]
    assert server.header(0, b"content-length") == [b"2"]
    assert server.header(0, b"host") == [server.url.split("//")[1].encode()]


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (OK, 1),  # the whole body had come: the connection serves the next request
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123", 2),  # closed, not drained
    ],
)
def test_a_body_that_has_not_all_come_closes_its_connection(below, answer, connections):
    async def go() -> Canned:
        async with (
            Canned(answer) as server,
            httpx.AsyncClient(transport=below()) as client,
        ):
            outgoing = sender.Sender.of(client)
            for _ in range(2):
                reply = await outgoing.send("GET", server.url + "/x", timeout=2)
                assert await reply.read(4) == b"0123"
                await reply.close()
            return server

    assert asyncio.run(go()).connections == connections


def test_a_sender_names_each_failure(below):
    with pytest.raises(httpx.ConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        asyncio.run(_send(f"http://127.0.0.1:{refused_port()}/", below))
    with pytest.raises(httpx.ConnectError, match=f"{re.escape(UNRESOLVABLE)} does not resolve"):
        asyncio.run(_send(f"http://{UNRESOLVABLE}/", below))
    silent = Silent()
    try:
        with pytest.raises(httpx.ReadTimeout):
            asyncio.run(_send(silent.url, below))
    finally:
        silent.close()

    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123"  # then the server hangs up

    async def go() -> None:
        async with Canned(cut, hang_up=True) as server:
            await _send(server.url, below)

    with pytest.raises(httpx.ReadError):
        asyncio.run(go())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1/videos/video_1",
        "https://up.example/gw%2Fx%7e/v1/videos/task%3A1",
        "http://up.example",
        "http://up.example/",
        "http://up.example//a//b/",
        "http://up.example/a/./b/../c",
        "http://up.example/a/..",
        "http://up.example/a/.x/..y/...",
        "http://up.example/a b/caf\u00e9",
        "http://up.example/a%zz/100%",
        "http://up.example/a?x=%7e&y=a+b#frag",
        "http://up.example?x=/a",
        "http://user:pw@UP.example:80/a",
        "http://[::1]:9000/a",
        "http://b\u00fccher.example/a",
    ],
)
def test_a_sender_sends_a_url_as_httpx_reads_it(url):
    async def go() -> str:
        async with httpx.AsyncClient(transport=transport.Transport()) as client:
            return str(sender.Sender.of(client)._wire(url, None))

    assert asyncio.run(go()) == str(transport.wire_url(httpx.URL(url)))


def test_the_service_polls_through_its_own_client_and_streams_through_aiohttp():
    async def go() -> tuple[int, int]:
        [config] = Settings(upstream_base_url="http://127.0.0.1:9").upstream_configs().values()
        client = _upstream_client(config)
        below = client._transport
        assert isinstance(below, transport.Transport) and below.pool is not None
        async with Canned(OK) as server:
            reply = await sender.Sender.of(client).send("GET", server.url + "/p", timeout=2)
            assert reply.status == 200 and await reply.read(100) == b"0123456789"
            await reply.close()
            pooled = len(below.pool._origins)
            streamed = await client.get(server.url + "/s")  # the gateway's way
            assert streamed.content == b"0123456789"
        await client.aclose()
        return pooled, server.connections

    assert asyncio.run(go()) == (1, 2)  # one connection of ours, one of aiohttp's
