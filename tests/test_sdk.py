"""The official ``openai`` Python SDK, pointed at status-proxy, against the simulator:
every ``videos`` method works, and with API keys each key sees only its own videos."""

from __future__ import annotations

import warnings

import httpx
import openai
import pytest

from service.simulator import video_bytes
from tests.harness import eventually

REFERENCE = bytes(range(256)) * 40


def sdk(service, key: str = "alpha") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture(autouse=True)
def _sora_is_deprecated_in_the_sdk():
    # The SDK marks its videos methods deprecated (OpenAI's own Sora API shuts down);
    # gateways keep the routes, and status-proxy serves them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def test_every_videos_method_of_the_sdk(make_service, upstream, hooks):
    service = make_service(api_keys=["alpha", "beta"])
    client = sdk(service)
    video = client.videos.create(
        model="sora-2",
        prompt="a fox in the snow",
        seconds="4",
        input_reference=("ref.png", REFERENCE, "image/png"),
        extra_body={
            "callback_url": f"{hooks.url}/sdk",
            "events": ["video.completed", "video.failed"],
            "callback_metadata": {"order": 42, "tags": ["a", "b"]},
            "callback_headers": {"X-Tenant": "t1"},
            "metadata": {"resolution": "720p"},
        },
    )
    registration = video.model_extra["registration"]
    assert registration["task_id"] == video.id
    assert registration["events"] == ["video.completed", "video.failed"]
    # A form carries text: bracket fields give strings, "[]" fields lists.
    assert registration["metadata"] == {"order": "42", "tags": ["a", "b"]}
    sent = upstream.sim.created[-1]
    assert sent.kind == "multipart"
    assert sent.fields == {
        "model": "sora-2", "prompt": "a fox in the snow", "seconds": "4",
        "metadata[resolution]": "720p",
    }  # fmt: skip
    assert sent.files["input_reference"] == ("ref.png", "image/png", REFERENCE)

    done = client.videos.poll(video.id, poll_interval_ms=100)
    assert done.status == "completed"
    assert client.videos.retrieve(video.id).id == video.id
    webhook = eventually(lambda: hooks.at("/sdk"), timeout=20)[0].json
    assert webhook["type"] == "video.completed" and webhook["metadata"]["order"] == "42"

    whole = client.videos.download_content(video.id, variant="video").read()
    assert whole == video_bytes(0, len(whole)) and len(whole) > 0
    part = client.videos.with_raw_response.download_content(
        video.id, extra_headers={"Range": "bytes=10-19"}
    )
    assert part.status_code == 206 and part.content == video_bytes(10, 10)

    remix = client.videos.remix(
        video.id, prompt="the same fox, at night", extra_body={"callback_url": f"{hooks.url}/r"}
    )
    assert remix.id != video.id and remix.model_extra["registration"]["task_id"] == remix.id
    assert remix.remixed_from_video_id == video.id
    assert upstream.sim.created[-1].fields == {"prompt": "the same fox, at night"}

    plain = client.videos.create(model="sora-2", prompt="no callback")
    assert "registration" not in plain.model_extra
    listed = [item.id for item in client.videos.list(limit=1)]  # one per page: pagination
    assert listed == [plain.id, remix.id, video.id]
    assert [item.id for item in client.videos.list(order="asc")] == listed[::-1]

    deleted = client.videos.delete(remix.id)
    assert deleted.deleted is True and remix.id not in upstream.sim.tasks
    cancelled = service.registration(remix.model_extra["registration"]["id"])
    assert cancelled["state"] == "cancelled"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(remix.id)
    assert [item.id for item in client.videos.list()] == [plain.id, video.id]


def test_the_sdk_on_an_open_api(service, upstream):
    client = sdk(service, key="anything")
    video = client.videos.create(model="sora-2", prompt="open")
    assert client.videos.poll(video.id, poll_interval_ms=100).status == "completed"
    assert [item.id for item in client.videos.list()] == [video.id]
    untracked = upstream.add(duration=60)  # created elsewhere: fetched through
    assert client.videos.retrieve(untracked).status in ("queued", "in_progress")
    assert client.videos.delete(video.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_each_key_sees_only_its_own_videos(make_service, upstream, hooks):
    service = make_service(api_keys=["alpha", "beta"])
    alpha, beta = sdk(service, "alpha"), sdk(service, "beta")
    created = alpha.videos.create(model="sora-2", prompt="alpha's")  # no callback
    registered = upstream.add(duration=0.2, queued=0)
    assert service.register(registered, f"{hooks.url}/a").status_code == 201
    elsewhere = upstream.add(duration=0.2, queued=0)  # on the upstream, never through us

    as_beta = httpx.Client(base_url=service.url, headers={"Authorization": "Bearer beta"})
    try:
        for task in (created.id, registered, elsewhere):
            for method, path in (
                ("GET", f"/v1/videos/{task}"),
                ("GET", f"/v1/videos/{task}/content"),
                ("DELETE", f"/v1/videos/{task}"),
            ):
                answer = as_beta.request(method, path)
                assert answer.status_code == 404, (method, path, answer.text)
                assert answer.json()["error"]["param"] == "task_id"
            remix = as_beta.post(f"/v1/videos/{task}/remix", json={"prompt": "mine now"})
            assert remix.status_code == 404
    finally:
        as_beta.close()
    assert list(beta.videos.list()) == []
    assert upstream.polls(elsewhere) == 0 and elsewhere in upstream.sim.tasks
    assert created.id in upstream.sim.tasks and len(upstream.sim.created) == 1

    # The owner reads, polls and downloads both: the one it created without a callback
    # (fetched through) and the one it registered (from the snapshot).
    assert alpha.videos.poll(created.id, poll_interval_ms=100).status == "completed"
    assert alpha.videos.poll(registered, poll_interval_ms=100).status == "completed"
    assert alpha.videos.download_content(created.id).read()
    assert {item.id for item in alpha.videos.list()} == {created.id, registered}
    with pytest.raises(openai.NotFoundError):
        alpha.videos.retrieve(elsewhere)


def test_registering_another_keys_created_video_is_404(make_service, upstream, hooks):
    """A task id is no key: a video one key created through status-proxy can never be
    registered by another, so no other key can read, download, remix or delete it."""
    service = make_service(api_keys=["alpha", "beta"])
    alpha = sdk(service, "alpha")
    created = alpha.videos.create(model="sora-2", prompt="alpha's")
    outside = upstream.add(duration=0.2, queued=0)  # made on the upstream directly
    with httpx.Client(base_url=service.url, headers={"Authorization": "Bearer beta"}) as beta:
        taken = beta.post(
            "/v1/registrations", json={"task_id": created.id, "callback_url": f"{hooks.url}/b"}
        )
        assert taken.status_code == 404, taken.text
        assert taken.json()["error"]["param"] == "task_id"
        for method, path in (
            ("GET", f"/v1/videos/{created.id}/content"),
            ("DELETE", f"/v1/videos/{created.id}"),
        ):
            assert beta.request(method, path).status_code == 404
        # A task made outside status-proxy can be registered, by either key.
        hook = {"task_id": outside, "callback_url": f"{hooks.url}/b"}
        assert beta.post("/v1/registrations", json=hook).status_code == 201
    assert created.id in upstream.sim.tasks  # never deleted
    assert alpha.videos.retrieve(created.id).id == created.id
    # The creator registers its own video as often as it likes.
    mine = alpha.post(
        "/registrations",
        body={"task_id": created.id, "callback_url": f"{hooks.url}/a"},
        cast_to=dict,
    )
    assert mine["task_id"] == created.id
