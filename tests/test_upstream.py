import asyncio
import gzip
import json

import httpx
import pytest
from pydantic import SecretStr

from service import transport, upstream
from service.runtime import Runtime
from tests.conftest import test_settings
from tests.harness import Canned
from tests.rogue import Rogue


def fetch(handler, task_id="video_1"):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await upstream.Upstream(
                "https://up.example/", SecretStr("sk-key"), client, 5
            ).fetch(task_id)

    return asyncio.run(go())


def answer(status, body=None, headers=None):
    content = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return lambda request: httpx.Response(status, content=content, headers=headers)


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, {"id": "video_1", "status": "queued"}, "ok"),
        (200, [1, 2], "error"),
        (200, b"not json", "error"),
        (404, {"error": "nope"}, "not_found"),
        (400, {"code": "task_not_exist", "message": "task_not_exist", "data": None}, "not_found"),
        (400, {"error": {"code": "task_not_exist", "message": "x"}}, "not_found"),
        (400, {"code": "invalid_request", "message": "bad"}, "error"),
        (400, b"<html>", "error"),
        (429, {}, "rate_limited"),
        (401, {}, "unauthorized"),
        (403, {}, "forbidden"),
        (500, {}, "error"),
        (503, {}, "error"),
        # A 200 that is not a video object of this task is a passing error.
        (200, {"error": {"message": "upstream request timed out, please retry"}}, "error"),
        (200, None, "error"),
        (200, b"<html><body>502</body></html>", "error"),
        (200, {"id": "video_2", "error": {"message": "x"}}, "error"),
        (200, {"id": "video_1", "error": {"message": "blocked", "code": "x"}}, "ok"),
        (200, {"code": "success", "data": {"task_id": "video_1", "status": "QUEUED"}}, "ok"),
        # Errors the upstream will keep answering, and passing ones.
        (501, {"code": "not_implemented", "message": "not_implemented:doubao"}, "lasting"),
        (501, b"", "lasting"),
        (400, {"code": "invalid_channel_id", "message": "x", "data": None}, "lasting"),
        (500, {"code": "convert_to_openai_video_failed", "message": "x"}, "lasting"),
        (500, {"code": "get_task_failed", "message": "x"}, "error"),
    ],
)
def test_classification(status, body, outcome):
    assert fetch(answer(status, body)).outcome == outcome


def test_a_lasting_error_carries_the_upstreams_words():
    body = {"code": "not_implemented", "message": "not_implemented:doubao", "data": None}
    result = fetch(answer(501, body))
    assert (result.code, result.message) == ("not_implemented", "not_implemented:doubao")


def test_a_wrapped_answer_is_kept_unwrapped():
    inner = {"task_id": "video_1", "status": "SUCCESS", "progress": "100%"}
    result = fetch(answer(200, {"code": "success", "message": "", "data": inner}))
    assert result.video == inner and json.loads(result.text) == inner


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbf" + json.dumps({"id": "video_1", "status": "queued"}).encode(),
        json.dumps({"id": "video_1", "status": "queued"}).encode("utf-16"),
        json.dumps({"id": "video_1", "status": "queued"}).encode("utf-16-le"),
        '{"id": "video_1", "status": "queued", "title": "caf\u00e9"}'.encode("latin-1"),
        b'{"id": "video_1", "status": "queued", "title": "\\ud800 and \\udfff"}',
        b'{"id": "video_1", "status": "queued", "progress": NaN}',
    ],
)
def test_unclean_bytes_become_clean_utf8_json(raw):
    result = fetch(answer(200, raw))
    assert result.outcome == "ok" and result.video["status"] == "queued"
    text = result.text.encode("utf-8")  # strict: no surrogates, no byte-order mark
    assert not text.startswith(b"\xef\xbb\xbf") and b"NaN" not in text
    json.loads(text, parse_constant=lambda word: pytest.fail(f"not JSON: {word}"))


def test_clean_bytes_are_kept_as_the_upstream_sent_them():
    raw = b'{ "id" : "video_1",  "status": "queued", "title": "caf\xc3\xa9" }'
    assert fetch(answer(200, raw)).text == raw.decode()


def test_retry_after_is_read():
    result = fetch(answer(429, {}, {"Retry-After": "7"}))
    assert result.outcome == "rate_limited" and result.retry_after == 7


def test_request_carries_key_and_encoded_id():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"status": "queued"})

    fetch(handler, "a:b.c")
    assert seen[0].headers["authorization"] == "Bearer sk-key"
    assert seen[0].url.raw_path == b"/v1/videos/a%3Ab.c"


@pytest.mark.parametrize("task_id", ["../admin", "a/b", "x?y=1", "x#y", "%2e%2e", "a b"])
def test_task_id_can_never_change_the_path(task_id):
    path = upstream.video_path(task_id)
    assert path.count("/") == 3 and "?" not in path and "#" not in path
    assert not path.endswith("/..")


def test_transport_errors():
    def timeout(request):
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request):
        raise httpx.ConnectError("refused", request=request)

    assert fetch(timeout).outcome == "timeout"
    assert fetch(refused).outcome == "unreachable"


def test_oversized_answer_is_an_error():
    result = fetch(answer(200, b"{" + b" " * (upstream.MAX_BODY + 10) + b"}"))
    assert result.outcome == "error"


@pytest.mark.parametrize(
    ("mode", "outcome"),
    # A reset is a broken connection, never a timeout (service/transport.py).
    [
        ("reset", {"error"}),
        ("garbage", {"error"}),
        ("flood", {"error"}),
        ("silent", {"timeout"}),
    ],
)
def test_a_misbehaving_upstream_is_an_outcome_not_a_crash(mode, outcome, tmp_path):
    """Through the client the service really uses (httpx over aiohttp)."""
    rogue = Rogue().start()
    settings = test_settings(
        f"sqlite:///{tmp_path / 'x.db'}", f"{rogue.url}/{mode}", upstream_timeout=1.0
    )

    async def go():
        runtime = Runtime(settings, workers=False)
        try:
            return await runtime.upstream.fetch("video_1")
        finally:
            await runtime.upstream.client.aclose()
            await runtime.delivery_client.aclose()
            await runtime.db.dispose()

    try:
        result = asyncio.run(go())
    finally:
        rogue.stop()
    assert result.outcome in outcome, result
    assert rogue.requests[f"/{mode}/v1/videos/video_1"] in (1, 2)  # aiohttp may retry a GET once


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (json.dumps({"id": "video_1", "status": "queued"}).encode(), "ok"),
        (b"{" + b" " * upstream.MAX_BODY + b"}", "error"),  # small on the wire, too large
    ],
)
def test_a_compressed_answer_is_read_decoded_within_the_limit(raw, outcome):
    """Through the transport the service really uses, from a real server."""
    body = gzip.compress(raw)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"

    async def go() -> upstream.Fetch:
        async with (
            Canned(head % len(body) + body) as server,
            httpx.AsyncClient(transport=transport.Transport()) as client,
        ):
            return await upstream.Upstream(server.url, SecretStr("k"), client, 5).fetch("video_1")

    result = asyncio.run(go())
    assert result.outcome == outcome, result
    assert outcome == "ok" or result.detail == "upstream answer too large"
