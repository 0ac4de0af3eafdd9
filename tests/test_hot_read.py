"""The hot read (service/api/hot_read.py): a cached ``GET /v1/videos/{task_id}`` answered
below FastAPI's routing must be the route's answer, status, headers and body; anything
else must reach the route.

Each request goes to the service and to a twin on the same database that serves the same
settings through the route alone, and the two answers must match. Where the hot read
should answer, the route is broken for the second request, so only the hot read can."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.api import shortcuts, targets
from service.main import create_app
from service.models import TASK_ID_LIMIT
from tests.conftest import Upstream
from tests.harness import ServerThread, Service, eventually

ALICE, BOB = "hot-key-alice", "hot-key-bob"
OTHER_KEY = "sk-hot-other-5d1e"
REQUEST_ID = {"X-Request-ID": "hot-read-test"}


@dataclass
class Twins:
    """The service and its route-only twin, on one database."""

    service: Service
    twin: str
    http: httpx.Client

    def both(self, path: str, key: str | None = ALICE, method: str = "GET") -> httpx.Response:
        """Ask both; their answers must be the same. Returns the service's."""
        headers = {**REQUEST_ID, **({"Authorization": f"Bearer {key}"} if key else {})}
        fast = self.http.request(method, self.service.url + path, headers=headers)
        slow = self.http.request(method, self.twin + path, headers=headers)
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content), path
        _same(fast, self.service.url, slow, self.twin)
        return fast

    def hot(self, path: str, key: str | None = ALICE) -> httpx.Response:
        """The route's answer, then the same with the route out of order: the hot read's."""
        answer = self.both(path, key)
        assert answer.status_code == 200, answer.text
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(targets, "task_upstream", _out_of_order)
            fast = self.http.get(self.service.url + path, headers={**REQUEST_ID, **_bearer(key)})
        assert (fast.status_code, fast.content) == (200, answer.content), path
        _same(fast, self.service.url, answer, self.service.url)
        return fast

    def register(self, task_id: str, key: str = ALICE, **fields: Any) -> None:
        body = {"task_id": task_id, "callback_url": "http://127.0.0.1:9/h", **fields}
        response = self.http.post(
            self.service.url + "/v1/registrations", json=body, headers=_bearer(key)
        )
        assert response.status_code == 201, response.text

    def completed(self, task_id: str, key: str = ALICE, query: str = "") -> None:
        """Wait until the task's stored snapshot is final (then its bytes stay put)."""
        url = f"{self.service.url}/v1/videos/{task_id}{query}"
        eventually(
            lambda: (
                (r := self.http.get(url, headers=_bearer(key))).status_code == 200
                and r.json()["status"] == "completed"
            )
        )


async def _out_of_order(*_: Any) -> Any:
    raise AssertionError("the route answered: the hot read should have")


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _same(one: httpx.Response, base: str, other: httpx.Response, other_base: str) -> None:
    """The same headers in the same order, but the date, each server's own address, and
    Age within a second (two requests may straddle one)."""
    assert _shown(one, base) == _shown(other, other_base)
    ages = [int(response.headers.get("age", 0)) for response in (one, other)]
    assert abs(ages[0] - ages[1]) <= 1, ages


def _shown(response: httpx.Response, base: str) -> list[tuple[str, str]]:
    return [
        (name, "AGE" if name == "age" else value.replace(base, "BASE"))
        for name, value in response.headers.multi_items()
        if name != "date"
    ]


def _twin(service: Service) -> str:
    """The same service, without the hot read, on the same database."""
    app = create_app(service.settings, workers=False, migrate=False)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not shortcuts.Shortcuts]
    return ServerThread(app).start().url


@pytest.fixture
def other(simulate: Callable[..., Upstream]) -> Upstream:
    return simulate("openai-video", api_key=OTHER_KEY, duration=0.3)


@pytest.fixture
def keyed(make_service: Any, other: Upstream) -> Iterator[Twins]:
    entry = {"base_url": other.url, "api_key": OTHER_KEY, "family": "openai-video"}
    service = make_service(api_keys=[ALICE, BOB], upstreams={"other": entry})
    with httpx.Client(timeout=15) as http:
        yield Twins(service, _twin(service), http)


@pytest.fixture
def open_api(make_service: Any) -> Iterator[Twins]:
    service = make_service()
    with httpx.Client(timeout=15) as http:
        yield Twins(service, _twin(service), http)


def test_a_cached_video_is_the_routes_answer_and_scoped_per_key(keyed, upstream, other):
    alice, bob = upstream.add(duration=0.3), upstream.add(duration=0.3)
    keyed.register(alice)
    keyed.register(bob, key=BOB)
    keyed.completed(alice)
    keyed.completed(bob, key=BOB)
    answer = keyed.hot(f"/v1/videos/{alice}")
    assert answer.json()["id"] == alice and answer.headers["x-request-id"] == "hot-read-test"
    assert {"age", "openai-poll-after-ms", "content-length"} <= set(answer.headers)
    assert answer.headers["content-type"] == "application/json"
    keyed.hot(f"/v1/videos/{bob}", key=BOB)
    keyed.hot(f"/v1/videos/{alice}?upstream=default")
    # Another key's video, or one on another upstream, is the route's 404.
    for path, key in ((f"/v1/videos/{alice}", BOB), (f"/v1/videos/{bob}", ALICE),
                      (f"/v1/videos/{alice}?upstream=other", ALICE)):  # fmt: skip
        assert keyed.both(path, key).json()["error"]["code"] == "not_found"
    # Without a request id, the access log still makes one.
    plain = keyed.http.get(f"{keyed.service.url}/v1/videos/{alice}", headers=_bearer(ALICE))
    assert plain.status_code == 200 and len(plain.headers["x-request-id"]) == 32


def test_an_id_on_two_upstreams_is_the_one_the_route_means(keyed, upstream, other):
    same = "video_hot-same-id"
    upstream.add(id=same, duration=0.3)
    other.add(id=same, duration=0.3)
    keyed.register(same, upstream="other")  # alice: on "other" only
    keyed.register(same, key=BOB)  # bob: on "default"
    keyed.completed(same)
    keyed.completed(same, key=BOB)
    keyed.hot(f"/v1/videos/{same}")
    keyed.hot(f"/v1/videos/{same}?upstream=other")
    keyed.hot(f"/v1/videos/{same}", key=BOB)
    assert keyed.both(f"/v1/videos/{same}?upstream=default").status_code == 404
    assert keyed.both(f"/v1/videos/{same}?upstream=other", key=BOB).status_code == 404


def test_keys_queries_and_paths_the_hot_read_leaves_to_the_route(keyed, upstream):
    task = upstream.add(duration=0.3)
    keyed.register(task)
    keyed.completed(task)
    path = f"/v1/videos/{task}"
    for key in (None, "not-a-key", f"{ALICE}x", f"{ALICE} extra"):
        assert keyed.both(path, key).status_code == 401, key
    for scheme in ("Basic", "bearer", "Bearer  ", "Token"):
        headers = {**REQUEST_ID, "Authorization": f"{scheme} {ALICE}"}
        fast = keyed.http.get(keyed.service.url + path, headers=headers)
        slow = keyed.http.get(keyed.twin + path, headers=headers)
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content), scheme
        _same(fast, keyed.service.url, slow, keyed.twin)
    for query in ("?upstream=nowhere", "?upstream=", "?upstream=Default", "?page=2",
                  "?upstream=default&upstream=default", "?upstream=default&x=1",
                  "?upstream=defaul%74", "?", "?upstream"):  # fmt: skip
        keyed.both(path + query)
    assert keyed.both(f"{path}?upstream=nowhere").status_code == 422
    assert keyed.both(f"{path}?page=2").json()["error"]["param"] == "page"
    # A trailing slash, HEAD, other methods and routes below the id.
    keyed.both(path + "/")
    assert keyed.both(path, method="HEAD").status_code == 405
    keyed.both(path + "/content", method="HEAD")
    keyed.both("/v1/videos/")
    keyed.both("/v1/videos")


def test_ids_at_and_over_the_limit_and_percent_encoded(keyed, upstream):
    longest = "v" + "x" * (TASK_ID_LIMIT - 1)
    upstream.add(id=longest, duration=0.3)
    keyed.register(longest)
    keyed.completed(longest)
    keyed.hot(f"/v1/videos/{longest}")
    assert keyed.both(f"/v1/videos/{longest}x").status_code == 422
    dotted = "video_hot.read:1"
    upstream.add(id=dotted, duration=0.3)
    keyed.register(dotted)
    keyed.completed(dotted)
    keyed.hot("/v1/videos/video%5Fhot%2Eread%3A1")  # the same id, percent-encoded
    for bad in ("video%2Fhot", "a..b", "%2e%2e", "a%20b", "-x", "a%00b", "%E2%80%AEx"):
        assert keyed.both(f"/v1/videos/{bad}").status_code in (404, 422), bad


def test_the_open_api_reads_the_cache_and_fetches_the_rest_through(open_api, upstream):
    task = upstream.add(duration=0.3)
    register = open_api.http.post(
        open_api.service.url + "/v1/registrations",
        json={"task_id": task, "callback_url": "http://127.0.0.1:9/h"},
    )
    assert register.status_code == 201
    open_api.completed(task)
    open_api.hot(f"/v1/videos/{task}", key=None)
    open_api.hot(f"/v1/videos/{task}?upstream=default", key=None)
    # A task it does not poll is the route's: fetched from the upstream once.
    untracked = upstream.add(duration=60)
    fetched = open_api.http.get(f"{open_api.service.url}/v1/videos/{untracked}")
    assert fetched.status_code == 200 and fetched.headers["age"] == "0"
    assert fetched.json()["id"] == untracked and upstream.polls(untracked) == 1
    # A video deleted here is the route's 404, though its snapshot stays.
    assert open_api.http.delete(f"{open_api.service.url}/v1/videos/{task}").status_code == 200
    assert open_api.both(f"/v1/videos/{task}", key=None).status_code == 404
