"""The webhook client (service/wire.py) against real servers on 127.0.0.1: framing,
kept connections, its limit, TLS, and each failure named (what the sender's tests run
on both clients is in tests/test_sender.py)."""

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trustme

from service import callbacks, wire
from tests.harness import Canned

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Scripted:
    """A server whose ``handler`` gets each connection with its number (from 0)."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> "Scripted":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            await self.handler(reader, writer, number)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _request(reader: asyncio.StreamReader) -> bytes:
    """One request's head (the tests' requests carry no body, or say its length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


async def _ask(
    pool: wire.Pool, url: str, timeout: float = 2.0, read: int = 1 << 20
) -> tuple[int, bytes]:
    """GET ``url`` through ``pool``: the status and the body, read ``read`` at a time."""
    place = httpx.URL(url)
    reply = await pool.request(
        "GET", place.scheme, place.host, place.port, place.raw_path.decode(), [], None, timeout
    )
    chunks = []
    try:
        while chunk := await reply.read(read):
            chunks.append(chunk)
    finally:
        await reply.close()
    return reply.status, b"".join(chunks)


def _answering(*answers: bytes) -> Handler:
    """A handler that answers a connection's requests with ``answers`` in turn, then
    holds it open without a word."""

    async def handler(reader, writer, number) -> None:
        for answer in answers:
            await _request(reader)
            writer.write(answer)
            await writer.drain()
        await asyncio.sleep(5)

    return handler


def _run(answers: list[bytes], *asks: str, pool: wire.Pool | None = None) -> tuple[list, int]:
    """Each path of ``asks`` asked in turn of a Canned server answering ``answers[0]``."""

    async def go() -> tuple[list, int]:
        async with Canned(answers[0]) as server:
            through = pool or wire.Pool()
            got = [await _ask(through, server.url + path) for path in asks]
            return got, server.connections

    return asyncio.run(go())


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwebh\r\n3\r\nook\r\n0\r\n\r\n"


def test_a_chunked_body_is_read_whole_and_its_connection_kept():
    got, connections = _run([CHUNKED], "/a", "/b")
    assert got == [(200, b"webhook")] * 2 and connections == 1


def test_a_body_that_ends_with_the_connection_is_read_whole():
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"

    async def go() -> tuple[list, int]:
        async with Canned(until_close, hang_up=True) as server:
            pool = wire.Pool()
            return [await _ask(pool, server.url + p) for p in ("/a", "/b")], server.connections

    got, connections = asyncio.run(go())
    assert got == [(200, b"all of it")] * 2 and connections == 2


def test_an_interim_answer_is_skipped():
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"
    got, connections = _run([interim], "/a", "/b")
    assert got == [(202, b"ok")] * 2 and connections == 1


def test_no_content_has_no_body_and_keeps_the_connection():
    got, connections = _run([b"HTTP/1.1 204 No Content\r\n\r\n"], "/a", "/b")
    assert got == [(204, b"")] * 2 and connections == 1


def test_a_large_body_comes_whole_in_small_reads():
    body = bytes(range(256)) * 4096  # 1 MiB, past the point where reading pauses
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def go() -> tuple[int, bytes]:
        async with Canned(answer) as server:
            return await _ask(wire.Pool(), server.url + "/big", read=5000)

    assert asyncio.run(go()) == (200, body)


def test_a_kept_connection_closed_meanwhile_sends_the_request_again_on_a_new_one():
    heads: list[bytes] = []

    async def handler(reader, writer, number) -> None:
        heads.append(await _request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if number == 0:  # the first connection takes the next request, then hangs up
            heads.append(await _request(reader))
            return
        await _request(reader)

    async def go() -> tuple[list, int]:
        async with Scripted(handler) as server:
            pool = wire.Pool()
            return [await _ask(pool, server.url + p) for p in ("/1", "/2")], server.connections

    got, connections = asyncio.run(go())
    assert got == [(200, b"ok")] * 2 and connections == 2
    assert [h.split(b" ")[1] for h in heads] == [b"/1", b"/2", b"/2"]  # sent twice


def test_a_new_connection_that_hangs_up_without_an_answer_is_not_tried_again():
    async def handler(reader, writer, number) -> None:
        await _request(reader)

    async def go() -> int:
        async with Scripted(handler) as server:
            with pytest.raises(httpx.RemoteProtocolError, match="without an answer"):
                await _ask(wire.Pool(), server.url + "/x")
            return server.connections

    assert asyncio.run(go()) == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
)
def test_an_answer_that_is_not_http_is_a_protocol_error(answer):
    with pytest.raises(httpx.RemoteProtocolError):
        _run([answer], "/x")


def test_bytes_no_request_asked_for_close_the_connection():
    # Two answers to one request: the second must not be taken for the next request's.
    twice = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 500 No\r\nContent-Length: 1\r\n\r\nb"
    got, connections = _run([twice], "/a", "/b")
    assert got == [(200, b"a")] * 2 and connections == 2


def test_a_slow_body_is_a_read_timeout():
    handler = _answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01")

    async def go() -> None:
        async with Scripted(handler) as server:
            await _ask(wire.Pool(), server.url + "/slow", timeout=0.3)

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(go())


def test_requests_past_the_limit_wait_for_a_place_within_their_timeout():
    release = asyncio.Event()

    async def handler(reader, writer, number) -> None:
        while True:
            await _request(reader)
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def go() -> tuple[list, int]:
        async with Scripted(handler) as server:
            pool = wire.Pool(limit=1)
            first = asyncio.create_task(_ask(pool, server.url + "/1"))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.ConnectTimeout, match="busy"):
                await _ask(pool, server.url + "/2", timeout=0.2)
            second = asyncio.create_task(_ask(pool, server.url + "/3"))
            await asyncio.sleep(0.1)
            assert not second.done()  # waits for the first's place
            release.set()
            return [await first, await second], server.connections

    got, connections = asyncio.run(go())
    assert got == [(200, b"ok")] * 2 and connections == 1  # the second took the first's


def test_a_connection_idle_past_its_time_is_closed():
    async def go() -> int:
        async with Canned(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as server:
            pool = wire.Pool(keep_idle=0.05)
            await _ask(pool, server.url + "/1")
            await asyncio.sleep(0.3)
            await _ask(pool, server.url + "/2")
            return server.connections

    assert asyncio.run(go()) == 2


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\0b"])
def test_a_header_that_would_break_the_head_is_refused_before_sending(value):
    async def go() -> int:
        async with Canned(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as server:
            place = httpx.URL(server.url)
            with pytest.raises(httpx.LocalProtocolError):
                await wire.Pool().request(
                    "POST", "http", place.host, place.port, "/", [("x-a", value)], b"{}", 2
                )
            return server.connections

    assert asyncio.run(go()) == 0


def test_the_guard_vets_a_name_before_connecting():
    async def go() -> int:
        async with Canned(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as server:
            port = httpx.URL(server.url).port
            pool = wire.Pool(resolve=callbacks.resolver(callbacks.Guard()))
            with pytest.raises(httpx.ConnectError, match="'localhost'"):
                await _ask(pool, f"http://localhost:{port}/")
            loose = wire.Pool(resolve=callbacks.resolver(callbacks.Guard(allow_private=True)))
            assert await _ask(loose, f"http://localhost:{port}/") == (200, b"")
            return server.connections

    assert asyncio.run(go()) == 1  # only the allowed one connected


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def _tls_server(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def _answer_ok(reader, writer, number) -> None:
    while True:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()


def test_tls_checks_the_certificate_and_its_name(authority):
    async def go() -> tuple[int, bytes]:
        async with Scripted(_answer_ok, tls=_tls_server(authority)) as server:
            trusting = ssl.create_default_context()
            authority.configure_trust(trusting)
            got = await _ask(wire.Pool(tls=trusting), server.url + "/a")
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await _ask(wire.Pool(), server.url + "/b")  # the system's roots only
            other = trustme.CA().issue_cert("elsewhere.example")
            wrong = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            other.configure_cert(wrong)
            async with Scripted(_answer_ok, tls=wrong) as impostor:
                with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                    await _ask(wire.Pool(tls=trusting), impostor.url + "/c")
            return got

    assert asyncio.run(go()) == (200, b"secret")


def test_through_httpx_a_request_and_its_answer_are_whole():
    async def go() -> tuple[httpx.Response, Canned]:
        answer = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Id: 7\r\n\r\nmade."
        async with (
            Canned(answer) as server,
            httpx.AsyncClient(transport=wire.Transport()) as client,
        ):

            async def body():
                yield b"strea"
                yield b"med"

            first = await client.post(server.url + "/a?x=%7e", content=b'{"a":1}')
            second = await client.post(server.url + "/b", content=body())
            assert second.content == b"made."
            return first, server

    response, server = asyncio.run(go())
    assert (response.status_code, response.headers["x-id"], response.content) == (
        201,
        "7",
        b"made.",
    )
    assert server.heads[0].startswith(b"POST /a?x=%7e HTTP/1.1\r\n")
    assert server.header(0, b"content-length") == [b"7"]
    assert server.header(1, b"content-length") == [b"8"] and server.connections == 1


def test_whole_takes_a_body_that_has_all_come_and_never_waits():
    handler = _answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart",
    )

    async def go() -> list:
        async with Scripted(handler) as server:
            pool, place = wire.Pool(), httpx.URL(server.url)
            seen = []
            for _ in range(2):
                reply = await pool.request("GET", "http", place.host, place.port, "/", [], None, 2)
                await asyncio.sleep(0.1)  # whatever was sent has come
                seen += [reply.whole(), await reply.read(100)]
                await reply.close()
            return seen

    assert asyncio.run(go()) == [b"done", b"", None, b"part"]


def test_ssl_cert_file_names_the_roots_to_trust(authority, tmp_path, monkeypatch):
    roots = tmp_path / "roots.pem"
    authority.cert_pem.write_to_path(str(roots))
    monkeypatch.setenv("SSL_CERT_FILE", str(roots))

    async def go() -> tuple[int, bytes]:
        async with Scripted(_answer_ok, tls=_tls_server(authority)) as server:
            return await _ask(wire.Pool(), server.url.replace("127.0.0.1", "localhost") + "/r")

    assert asyncio.run(go()) == (200, b"secret")


async def _endless_head(reader, writer, number) -> None:
    await _request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
    for _ in range(64):  # 4 MiB of one header's value, unless the client stops reading
        writer.write(b"a" * 65536)
        await writer.drain()


@pytest.mark.parametrize(
    ("handler", "words"),
    [
        (_endless_head, "head passed"),
        (None, "more than 256 header lines"),
    ],
)
def test_an_answer_head_is_bounded(handler, words):
    many = b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 300 + b"Content-Length: 0\r\n\r\n"

    async def go() -> None:
        async with Scripted(handler or _answering(many)) as server:
            await _ask(wire.Pool(), server.url + "/h")

    with pytest.raises(httpx.RemoteProtocolError, match=words):
        asyncio.run(go())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n two\r\nContent-Length: 2\r\n\r\nok",  # obs-fold
        b"HTTP/1.1 200 OK\nX-Folded: one two\nContent-Length: 2\n\nok",  # bare LF
    ],
)
def test_answers_rfc_9112_asks_a_client_to_take_are_taken(answer):
    async def go() -> tuple[int, str, bytes]:
        async with Canned(answer) as server:
            place = httpx.URL(server.url)
            reply = await wire.Pool().request(
                "GET", "http", place.host, place.port, "/", [], None, 2
            )
            body = await reply.read(10)
            await reply.close()
            return reply.status, reply.headers["x-folded"], body

    assert asyncio.run(go()) == (200, "one two", b"ok")


def test_failures_are_named_by_httpx_classes_and_plain_words():
    async def hang_up(reader, writer, number) -> None:
        await _request(reader)

    async def go() -> list[BaseException]:
        seen = []
        async with Scripted(hang_up) as server, Canned(b"http/1.1 200 ok\r\n\r\n") as odd:
            for url in (server.url, odd.url):
                try:
                    await _ask(wire.Pool(), url + "/")
                except httpx.HTTPError as exc:
                    seen.append(exc)
        return seen

    hung, odd = asyncio.run(go())
    assert type(hung) is httpx.RemoteProtocolError and "without an answer" in str(hung)
    assert type(odd) is httpx.RemoteProtocolError
    assert str(odd).startswith("not an HTTP/1.1 answer (")


def test_an_ipv6_zone_stays_off_the_host_header():
    assert wire._Origin("http", "fe80::1%eth0", 8080).host_header == "[fe80::1]:8080"
    assert wire._Origin("https", "::1", None).host_header == "[::1]"
    assert wire._Origin("http", "example.com", 80).host_header == "example.com"
