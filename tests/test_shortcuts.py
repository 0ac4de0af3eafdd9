"""Shortcuts: a request the shortcut answers gets the bytes the FastAPI route would have
answered, and everything else reaches the route unchanged, body included. Checked over
real HTTP against the same service with its shortcuts removed."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from service.api import shortcuts
from service.main import create_app
from tests.conftest import test_settings
from tests.harness import ServerThread

KEY = "key-shortcut-test"
HOOK = "http://127.0.0.1:9/hook"
AUTH = {"Authorization": f"Bearer {KEY}"}


def start(db_url: str, upstream_url: str, with_shortcuts: bool) -> ServerThread:
    app = create_app(test_settings(db_url, upstream_url, api_keys=[KEY]), workers=False)
    if not with_shortcuts:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not shortcuts.Shortcuts]
    return ServerThread(app).start()


def shown(response: httpx.Response) -> tuple[int, str | None, bytes]:
    """Status, content type and body, with what differs between two databases (the
    registration id, the second it was made) blanked."""
    body = re.sub(rb'"id":"reg_[0-9A-Za-z]+"', b'"id":"reg_"', response.content)
    body = re.sub(rb'"created_at":[0-9]+', b'"created_at":0', body)
    return response.status_code, response.headers.get("content-type"), body


def registration(task_id: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "callback_url": HOOK, **fields}


BATCH = [
    *(registration(f"video_{n}") for n in range(12)),
    registration("video_twin", metadata={"order": "1"}, headers={"X-Trace": "a"}),
    registration("video_twin", metadata={"order": "1"}, headers={"X-Trace": "a"}),
    registration("video_full", events=["video.progress", "video.failed"], upstream="default"),
    registration("video_other", upstream="nowhere"),  # 422: the route's answer
    registration("video_bad", callback_url="ftp://example.com/x"),  # 422
    {"task_id": "video_extra", "callback_url": HOOK, "unknown": 1},  # 422, validation
]
CONFLICTING = [registration("video_conflict", events=e) for e in (["video.failed"], None)]


def test_concurrent_registrations_answer_as_the_route_does_one_at_a_time(
    db_url, tmp_path, upstream
):
    fast = start(db_url, upstream.url, with_shortcuts=True)
    slow = start(f"sqlite:///{tmp_path / 'route.db'}", upstream.url, with_shortcuts=False)
    conflicting = [{k: v for k, v in body.items() if v is not None} for body in CONFLICTING]

    async def concurrently() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fast.url, headers=AUTH, timeout=30) as client:
            posts = [client.post("/v1/registrations", json=b) for b in BATCH + conflicting]
            return list(await asyncio.gather(*posts))

    together = asyncio.run(concurrently())
    with httpx.Client(base_url=slow.url, headers=AUTH, timeout=30) as client:
        alone = [client.post("/v1/registrations", json=body) for body in BATCH + conflicting]

    n = len(BATCH)
    assert sorted(map(shown, together[:n])) == sorted(map(shown, alone[:n]))
    twins = together[12:14]
    assert sorted(r.status_code for r in twins) == [200, 201]
    assert twins[0].json()["id"] == twins[1].json()["id"]
    # Which of the two conflicting ones came first is the network's choice.
    assert sorted(r.status_code for r in together[n:]) == [201, 409]
    refused = next(r for r in together[n:] if r.status_code == 409)
    assert shown(refused) == shown(alone[n + 1])


def test_what_the_shortcut_does_not_answer_reaches_the_route_unchanged(db_url, tmp_path, upstream):
    fast = start(db_url, upstream.url, with_shortcuts=True)
    slow = start(f"sqlite:///{tmp_path / 'route.db'}", upstream.url, with_shortcuts=False)
    body = b'{"task_id": "video_1", "callback_url": "' + HOOK.encode() + b'"}'
    json_type = {"Content-Type": "application/json"}

    def cases() -> list[dict[str, Any]]:
        return [
            {"headers": json_type},  # no key
            {"headers": {**json_type, "Authorization": "Bearer wrong"}},
            {"headers": {**json_type, "Authorization": f"Basic {KEY}"}},
            {"headers": {**AUTH, "Content-Type": "text/plain"}},
            {"headers": {**AUTH, **json_type}, "content": b"{not json"},
            {"headers": {**AUTH, **json_type}, "content": b"\xff\xfe"},
            {"headers": {**AUTH, **json_type}, "content": b""},
            {"headers": {**AUTH, **json_type}, "content": b"[1]"},
            {"headers": {**AUTH, **json_type}, "content": b"[" * 30000 + b"]" * 30000},
            {"headers": {**AUTH, **json_type}, "content": b'{"task_id": "a", "task_id": "b"}'},
            {"headers": {**AUTH, **json_type}, "params": {"upstream": "default"}},
            {"headers": {**AUTH, **json_type}, "content": iter([body[:10], body[10:]])},  # chunked
            {"headers": {**AUTH, "Content-Type": "application/merge-patch+json"}},
            {"headers": {**AUTH, **json_type}},  # made, then the same again
            {"headers": {**AUTH, **json_type}},
        ]

    def answers(url: str) -> list[tuple[int, str | None, bytes]]:
        with httpx.Client(base_url=url, timeout=30) as client:
            return [
                shown(client.post("/v1/registrations", **({"content": body} | case)))
                for case in cases()
            ]

    fast_answers, route_answers = answers(fast.url), answers(slow.url)
    assert [a[0] for a in route_answers] == [
        401, 401, 401, 415, 400, 400, 422, 422, 400, 422, 422, 201, 200, 200, 200
    ]  # fmt: skip
    assert fast_answers == route_answers
