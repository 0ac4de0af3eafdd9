"""The registrations API over HTTP: rules, states and the error envelope."""

import hashlib
import socket

import httpx
import pytest

from tests.harness import eventually, sql


def envelope(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"} and error["message"]
    assert error["param"] == param
    return error


def test_create_get_and_dedupe(service, upstream, hooks):
    task = upstream.add(duration=30)
    url = f"{hooks.url}/h"
    first = service.register(task, url, metadata={"order_id": "42"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["object"] == "registration" and body["id"].startswith("reg_")
    assert body["state"] == "active" and body["events"] == ["video.completed", "video.failed"]
    assert body["metadata"] == {"order_id": "42"} and isinstance(body["created_at"], int)
    again = service.register(
        task, url, metadata={"order_id": "42"}, events=["video.failed", "video.completed"]
    )
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    envelope(service.register(task, url, metadata={"order_id": "43"}), 409, "metadata")
    envelope(
        service.register(task, url, events=["video.completed"], metadata={"order_id": "42"}),
        409,
        "events",
    )
    other_url = service.register(task, f"{hooks.url}/other")
    assert other_url.status_code == 201
    fetched = service.registration(body["id"])
    assert fetched["id"] == body["id"]
    eventually(lambda: service.registration(body["id"])["task"] is not None)


INVALID = [
        ("task_id", ""), ("task_id", "x" * 201), ("task_id", "-abc"), ("task_id", ".abc"),
        ("task_id", "a..b"), ("task_id", "a/b"), ("task_id", "a b"), ("task_id", "tâche"),
        ("task_id", "a\u200bb"), ("task_id", "ａbc"), ("task_id", 42), ("task_id", "abc\n"),
        ("task_id", "abc\u202egpj"), ("task_id", "a\x00b"), ("task_id", "a%2Fb"),
        ("task_id", "a/../b"), ("task_id", "%2e%2e"), ("task_id", "a\\b"), ("task_id", "a?b"),
        ("task_id", "a#b"), ("task_id", "K\u212a"),
        ("callback_url", "ftp://example.com/"), ("callback_url", "/relative"),
        ("callback_url", "https://u:p@example.com/"), ("callback_url", "https://e.com/" + "a" * 2050),
        ("callback_url", None),
        ("events", []), ("events", ["video.exploded"]),
        ("events", "video.completed"),
        ("metadata", [1]), ("metadata", {"k": "x" * 4100}), ("metadata", "text"),
    ]  # fmt: skip


def test_validation_rules(service):
    """Every rule of the contract, one service for the whole table."""
    for field, value in INVALID:
        body = {"task_id": "video_ok", "callback_url": "https://example.com/hook", field: value}
        response = service.client.post("/v1/registrations", json=body)
        assert response.status_code == 422, (field, value, response.text)
        assert response.json()["error"]["param"] == field, (field, value)


def test_valid_edge_values(service, hooks):
    assert service.register("a" * 200, f"{hooks.url}/h").status_code == 201
    assert service.register("A.b_c-d:9", f"{hooks.url}/h").status_code == 201
    assert service.register("a.b.c.", f"{hooks.url}/h").status_code == 201
    meta = {"k": "é" * 2040}  # 4080 bytes of UTF-8 plus the braces: within 4 KiB
    assert service.register("m1", f"{hooks.url}/h", metadata=meta).status_code == 201


def test_missing_and_unknown_fields(service):
    envelope(service.client.post("/v1/registrations", json={"task_id": "x"}), 422, "callback_url")
    body = {"task_id": "x", "callback_url": "https://example.com/", "colour": "red"}
    envelope(service.client.post("/v1/registrations", json=body), 422, "colour")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe{\x00",
        b'{"task_id": "x", "callback_url": ',
        b"",
        b'{"task_id": "\xc3\x28", "callback_url": "https://example.com/"}',  # not UTF-8
        b"[" * 30000 + b"]" * 30000,
        b'{"task_id": "x", "callback_url": "https://example.com/", "metadata": '
        + b'{"a": ' * 8000
        + b"1"
        + b"}" * 8001,
        b'{"task_id": "x", "callback_url": "https://example.com/", "metadata": {"a": '
        + b"[" * 15000
        + b"]" * 15000
        + b"}}",
        b"NaN",
        b'"just a string"',
    ],
)
def test_unreadable_bodies_are_400_or_422(service, content):
    response = service.client.post(
        "/v1/registrations", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 422), response.text
    assert set(response.json()["error"]) == {"code", "message", "param"}


def test_body_over_64_kib_is_413(service):
    big = {"task_id": "x", "callback_url": "https://example.com/", "metadata": {"k": "x" * 70000}}
    envelope(service.client.post("/v1/registrations", json=big), 413)

    def chunks():
        yield b'{"task_id": "x", "metadata": {"k": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}}'

    streamed = service.client.post(
        "/v1/registrations", content=chunks(), headers={"content-type": "application/json"}
    )
    envelope(streamed, 413)


def test_body_limit_is_enforced_while_reading(service):
    """A client announcing 10 MiB gets its 413 after 64 KiB, without sending the rest."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/registrations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10485760\r\n\r\n" + b"[" * (100 * 1024)
        )
        answer = b""
        while not answer.endswith(b"}") and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"body_too_large"' in answer


def test_framework_errors_use_the_envelope(service):
    envelope(service.client.get("/v1/nothing-here"), 404)
    envelope(service.client.put("/v1/registrations"), 405)
    envelope(service.client.get("/v1/registrations/reg_unknown"), 404)
    envelope(service.client.get("/v1/registrations", params={"limit": 0}), 422, "limit")
    envelope(service.client.get("/v1/registrations", params={"limit": 101}), 422, "limit")
    envelope(service.client.get("/v1/registrations", params={"state": "bogus"}), 422, "state")
    envelope(service.client.get("/v1/registrations", params={"after": "nope"}), 422, "after")


def test_unknown_query_parameters_and_methods(service):
    envelope(service.client.get("/v1/registrations", params={"limt": 5}), 422, "limt")
    envelope(service.client.get("/v1/videos/video_1", params={"x": 1}), 422, "x")
    body = b'{"task_id": "x", "callback_url": "https://example.com/"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        sent = service.client.post(
            "/v1/registrations", content=body, headers={"content-type": content_type}
        )
        envelope(sent, 415)
    json_ld = {"content-type": "application/ld+json; charset=utf-8"}
    assert service.client.post("/v1/registrations", content=body, headers=json_ld).status_code in (
        200,
        201,
    )
    response = service.client.request("TRACE", "/v1/registrations")
    envelope(response, 405)
    assert response.headers["allow"] == "GET, POST"


def test_list_pagination_newest_first(service, hooks):
    ids = [service.register(f"task{n}", f"{hooks.url}/h").json()["id"] for n in range(5)]
    page = service.client.get("/v1/registrations", params={"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [r["id"] for r in page["data"]] == ids[::-1][:2]
    assert page["first_id"] == ids[4] and page["last_id"] == ids[3]
    seen = [r["id"] for r in page["data"]]
    while page["has_more"]:
        page = service.client.get(
            "/v1/registrations", params={"limit": 2, "after": page["last_id"]}
        ).json()
        seen += [r["id"] for r in page["data"]]
    assert seen == ids[::-1]
    only = service.client.get("/v1/registrations", params={"task_id": "task3"}).json()
    assert [r["id"] for r in only["data"]] == [ids[3]]
    active = service.client.get("/v1/registrations", params={"state": "cancelled"}).json()
    assert active["data"] == [] and active["first_id"] is None and active["has_more"] is False


def test_cancel_rules(service, upstream, hooks):
    task = upstream.add(duration=30)
    reg = service.register(task, f"{hooks.url}/h").json()
    cancelled = service.client.delete(f"/v1/registrations/{reg['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert service.client.delete(f"/v1/registrations/{reg['id']}").status_code == 200
    envelope(service.client.post(f"/v1/registrations/{reg['id']}/redeliver"), 409)
    envelope(service.client.delete("/v1/registrations/reg_01m8h52dqvrze0pj79849s7qtk"), 404)
    # A cancelled registration frees its slot: the same task and URL can register again.
    assert service.register(task, f"{hooks.url}/h").status_code == 201


def test_redeliver_before_the_end_is_409(service, upstream, hooks):
    task = upstream.add(duration=30)
    reg = service.register(task, f"{hooks.url}/h").json()
    envelope(service.client.post(f"/v1/registrations/{reg['id']}/redeliver"), 409)


def test_delete_after_delivery_is_409(service, upstream, hooks):
    task = upstream.add(duration=0.2, queued=0)
    reg = service.register(task, f"{hooks.url}/h").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    envelope(service.client.delete(f"/v1/registrations/{reg['id']}"), 409)


def test_private_callbacks_refused_by_default(make_service):
    service = make_service(callback_allow_private=False)
    for url in ("http://127.0.0.1:9/h", "http://localhost/h", "http://169.254.169.254/"):
        envelope(service.register("video_1", url), 422, "callback_url")


def test_api_keys_protect_and_scope(make_service, hooks):
    service = make_service(api_keys="key-alpha,key-beta")
    reg = service.register("video_1", f"{hooks.url}/h").json()
    client = service.client
    no_key = client.get("/v1/registrations", headers={"Authorization": ""})
    envelope(no_key, 401)
    envelope(client.get("/v1/registrations", headers={"Authorization": "Bearer wrong"}), 401)
    envelope(client.get("/v1/videos/video_1", headers={"Authorization": "Basic abc"}), 401)
    for method, path in [
        ("POST", "/v1/registrations"),
        ("GET", f"/v1/registrations/{reg['id']}"),
        ("DELETE", f"/v1/registrations/{reg['id']}"),
        ("GET", f"/v1/registrations/{reg['id']}/deliveries"),
        ("POST", f"/v1/registrations/{reg['id']}/redeliver"),
    ]:
        envelope(client.request(method, path, headers={"Authorization": "Bearer key-alph"}), 401)
    beta = {"Authorization": "Bearer key-beta"}
    for method, path in [
        ("GET", f"/v1/registrations/{reg['id']}"),
        ("DELETE", f"/v1/registrations/{reg['id']}"),
        ("GET", f"/v1/registrations/{reg['id']}/deliveries"),
        ("POST", f"/v1/registrations/{reg['id']}/redeliver"),
    ]:
        envelope(client.request(method, path, headers=beta), 404)
    assert client.get("/v1/registrations", headers=beta).json()["data"] == []
    assert client.get(f"/v1/registrations/{reg['id']}").status_code == 200
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200
    # The owner is stored as a hash of the key, never the key.
    [[row]] = sql(service.settings.database_url, "SELECT * FROM registrations")
    assert row.owner == hashlib.sha256(b"key-alpha").hexdigest()
    assert not any("key-alpha" in str(value) for value in row)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/registrations?task_id=a%00b",
        "/v1/videos?after=a%00b",
        "/v1/registrations/reg_%00",
        "/v1/videos/video_%00",
        "/dashboard/registrations/reg_%00",
    ],
)
def test_nul_in_a_path_or_query_is_422_on_every_database(service, path):
    """PostgreSQL refuses NUL in text: before, such a read looked like a database outage."""
    answer = service.client.get(path)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] and "NUL" in answer.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/registrations", "/v1/webhook_secret/rotate"])
def test_the_key_is_checked_before_a_body_that_cannot_be_read(make_service, path):
    """FastAPI decodes a JSON body before the route's dependencies: the key still comes first."""
    service = make_service(api_keys=["right-key"])
    garbage = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    for auth in ({}, {"Authorization": "Bearer wrong-key"}):
        answer = httpx.post(
            f"{service.url}{path}",
            content=garbage["content"],
            headers={**garbage["headers"], **auth},
        )
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"]
    mine = httpx.post(
        f"{service.url}{path}",
        content=garbage["content"],
        headers={**garbage["headers"], "Authorization": "Bearer right-key"},
    )
    assert mine.status_code == 400, mine.text


def test_the_key_is_checked_before_a_method_the_path_does_not_take(make_service):
    """Every /v1 route answers a caller without a valid key 401, whatever the method."""
    service = make_service(api_keys=["right-key"])
    for method, path in [
        ("PATCH", "/v1/registrations"), ("OPTIONS", "/v1/videos/video_x"), ("PUT", "/v1/videos")
    ]:  # fmt: skip
        for auth in ({}, {"Authorization": "Bearer wrong-key"}):
            envelope(httpx.request(method, f"{service.url}{path}", headers=auth), 401)
        mine = httpx.request(
            method, f"{service.url}{path}", headers={"Authorization": "Bearer right-key"}
        )
        envelope(mine, 405)
        assert mine.headers["allow"]


NOT_JSON = {
    "nan": b'{"task_id": "video_nan", "callback_url": "https://example.com/h", "model": "m",'
    b' "metadata": {"x": NaN}}',
    "infinity": b'{"task_id": "video_inf", "callback_url": "https://example.com/h", "model": "m",'
    b' "metadata": {"x": -Infinity}}',
    "too-large": b'{"task_id": "video_big", "callback_url": "https://example.com/h", "model": "m",'
    b' "metadata": {"x": 1e999}}',
    "utf-16": '{"task_id": "video_u16", "callback_url": "https://example.com/h", "model": "m"}'.encode(
        "utf-16"
    ),
}


@pytest.mark.parametrize(
    "path", ["/v1/registrations", "/v1/videos", "/v1/videos/video_x/remix", "/v1/webhook_test"]
)
def test_what_json_does_not_allow_is_400_on_every_json_route(service, upstream, path):
    """NaN, Infinity, a number past a double and bodies not in UTF-8 are not JSON (RFC
    8259 sections 6 and 8.1), though Python's parser takes them: the first three would
    be stored as null, silently changing what the client sent."""
    for name, body in NOT_JSON.items():
        answer = service.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert envelope(answer, 400)["code"] == "invalid_json", name
    assert upstream.sim.created == []
    assert service.client.get("/v1/registrations").json()["data"] == []


def test_a_trailing_slash_is_another_path_not_a_redirect(service):
    """No redirect to a Location built from the Host header, for callers with no key."""
    for method, path in [
        ("POST", "/v1/registrations/"), ("GET", "/v1/videos/video_x/"), ("GET", "/v1/videos/")
    ]:  # fmt: skip
        answer = httpx.request(
            method, f"{service.url}{path}", headers={"Host": "elsewhere.example"}, json={}
        )
        assert "location" not in answer.headers, path
        envelope(answer, 404)
