"""Webhooks end to end: signed, retried, recorded, in order."""

import itertools
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook

from service.receiver import Receiver
from tests.harness import SECRET, ServerThread, eventually
from tests.rogue import Rogue


def test_terminal_webhook_is_signed_and_shaped(service, upstream, hooks):
    task = upstream.add(duration=0.3, queued=0.1)
    reg = service.register(task, f"{hooks.url}/done", metadata={"order_id": "42"}).json()
    [delivery] = eventually(lambda: hooks.at("/done"))
    Webhook(SECRET).verify(delivery.body, delivery.headers)
    event = json.loads(delivery.body)
    assert set(event) == {
        "id", "type", "timestamp", "registration_id", "task_id", "upstream", "metadata",
        "result", "data",
    }  # fmt: skip
    assert event["type"] == "video.completed" and event["registration_id"] == reg["id"]
    assert event["task_id"] == task and event["upstream"] == "default"
    assert event["result"] == {
        "status": "completed", "progress": 100, "video_url": event["data"]["video_url"],
        "error": None,
    }  # fmt: skip
    assert event["id"] == delivery.headers["webhook-id"] and event["id"].startswith("evt_")
    assert event["metadata"] == {"order_id": "42"} and event["timestamp"].endswith("Z")
    assert event["data"]["id"] == task and event["data"]["status"] == "completed"
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["accept-encoding"] == "identity"  # its answer is logged as sent
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 10
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    [attempt] = service.attempts(reg["id"])
    assert attempt["status_code"] == 200 and attempt["attempt"] == 1
    assert attempt["event_id"] == event["id"] and attempt["type"] == "video.completed"


def test_failed_task_sends_video_failed(service, upstream, hooks):
    task = upstream.add(duration=0.2, queued=0, outcome="failed")
    service.register(task, f"{hooks.url}/f")
    [delivery] = eventually(lambda: hooks.at("/f"))
    assert delivery.json["type"] == "video.failed"
    assert delivery.json["data"]["error"]["code"] == "generation_failed"
    assert delivery.json["result"]["error"] == {
        "code": "generation_failed", "message": "the model gave up",
    }  # fmt: skip


def test_retries_keep_the_webhook_id_and_follow_the_schedule(service, upstream, hooks):
    hooks.receiver.plan("/flaky", 500, 503, 200)
    task = upstream.add(duration=0.2, queued=0)
    reg = service.register(task, f"{hooks.url}/flaky").json()
    eventually(lambda: len(hooks.at("/flaky")) == 3)
    arrivals = hooks.at("/flaky")
    assert len({d.headers["webhook-id"] for d in arrivals}) == 1
    assert len({d.body for d in arrivals}) == 1
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(arrivals)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # schedule 0.2, 0.4 (jitter only adds)
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    codes = [a["status_code"] for a in service.attempts(reg["id"])]
    assert codes == [500, 503, 200]


def test_dead_after_the_schedule(service, upstream, hooks):
    hooks.receiver.plan("/down", 500)
    task = upstream.add(duration=0.1, queued=0)
    reg = service.register(task, f"{hooks.url}/down").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "failed", timeout=20)
    assert len(service.attempts(reg["id"])) == 4  # the first try and three retries
    time.sleep(1)
    assert len(hooks.at("/down")) == 4


def test_410_stops_at_once(service, upstream, hooks):
    hooks.receiver.plan("/gone", 410)
    task = upstream.add(duration=0.1, queued=0)
    reg = service.register(task, f"{hooks.url}/gone").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "failed")
    time.sleep(1)
    assert len(hooks.at("/gone")) == 1


def test_redirects_are_not_followed(service, upstream, hooks):
    hooks.receiver.plan("/moved", 302, 200, headers={"Location": f"{hooks.url}/elsewhere"})
    task = upstream.add(duration=0.1, queued=0)
    reg = service.register(task, f"{hooks.url}/moved").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    assert hooks.at("/elsewhere") == []
    assert [a["status_code"] for a in service.attempts(reg["id"])] == [302, 200]


def test_retry_after_is_honoured(service, upstream, hooks):
    hooks.receiver.plan("/busy", 429, 200, headers={"Retry-After": "2"})
    task = upstream.add(duration=0.1, queued=0)
    service.register(task, f"{hooks.url}/busy")
    eventually(lambda: len(hooks.at("/busy")) == 2, timeout=20)
    first, second = hooks.at("/busy")
    assert second.received_at - first.received_at >= 1.9


def test_progress_is_opt_in_ordered_and_ends_with_the_terminal_event(service, upstream, hooks):
    task = upstream.add(duration=2.0, queued=0.3)
    events = ["video.completed", "video.failed", "video.progress"]
    service.register(task, f"{hooks.url}/p", events=events)
    service.register(task, f"{hooks.url}/quiet")
    eventually(lambda: any(d.json["type"] == "video.completed" for d in hooks.at("/p")))
    types = [d.json["type"] for d in hooks.at("/p")]
    assert types[-1] == "video.completed" and "video.progress" in types
    assert types.count("video.completed") == 1
    progress = [d.json["data"]["progress"] for d in hooks.at("/p")]
    assert progress == sorted(progress)
    assert [d.json["type"] for d in eventually(lambda: hooks.at("/quiet"))] == ["video.completed"]


def test_progress_coalesces_behind_a_slow_receiver(service, upstream, hooks):
    hooks.receiver.plan("/slow", 200, delay=1.0)
    task = upstream.add(duration=3.0, queued=0)
    events = ["video.completed", "video.progress"]
    reg = service.register(task, f"{hooks.url}/slow", events=events).json()
    eventually(lambda: any(d.json["type"] == "video.completed" for d in hooks.at("/slow")), 20)
    arrivals = hooks.at("/slow")
    progress = [d.json["data"]["progress"] for d in arrivals if d.json["type"] == "video.progress"]
    # Polled every 0.2-0.5 s, the task showed a new progress value many times; one second per
    # webhook leaves room for about one progress event per second, each the latest one.
    assert upstream.polls(task) >= 8
    assert 1 <= len(progress) <= 5, progress
    assert progress == sorted(set(progress))
    assert arrivals[-1].json["type"] == "video.completed"
    # Dropped events were never attempted: one attempt per arrival, once all are recorded.
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    assert len(service.attempts(reg["id"])) == len(arrivals)


def test_a_progress_attempt_in_flight_when_the_task_ends_is_not_retried(
    make_service, upstream, hooks
):
    """Progress is best effort: one not yet accepted when the terminal event is ready is
    dropped, also when its attempt was in flight then and failed; the terminal event
    does not wait out its retries (here a retry would come 600 s later)."""
    service = make_service(delivery_timeout=3.0, delivery_retry_schedule=(600.0,))
    hooks.receiver.plan("/hang", 200, delay=5.0)  # every attempt times out, for now
    task = upstream.add(duration=1.0, queued=0)
    events = ["video.completed", "video.progress"]
    reg = service.register(task, f"{hooks.url}/hang", events=events).json()
    eventually(lambda: service.client.get(f"/v1/videos/{task}").json()["status"] == "completed")
    hooks.receiver.plan("/hang", 200)  # answers at once from now on
    arrived = eventually(
        lambda: [d for d in hooks.at("/hang") if d.json["type"] == "video.completed"], timeout=15
    )
    assert len(arrived) == 1
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    attempts = service.attempts(reg["id"])
    timed_out = [a for a in attempts if a["type"] == "video.progress" and a["status_code"] is None]
    assert timed_out, attempts  # the progress attempt was in flight, and failed
    assert all(a["attempt"] == 1 for a in attempts), attempts  # none was retried


def test_a_registration_ends_quietly_when_its_terminal_event_is_not_wanted(
    service, upstream, hooks
):
    task = upstream.add(duration=1.0, queued=0, outcome="failed")
    events = ["video.completed", "video.progress"]
    reg = service.register(task, f"{hooks.url}/ui", events=events).json()
    eventually(lambda: service.registration(reg["id"])["state"] == "ended")
    types = {d.json["type"] for d in hooks.at("/ui")}
    assert types == {"video.progress"}


def test_events_must_name_a_terminal_event(service, upstream):
    task = upstream.add(duration=60)
    for events in (["video.progress"], ["video.progress", "video.progress"]):
        answer = service.register(task, "http://127.0.0.1:9/x", events=events)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["param"] == "events"
    created = service.client.post(
        "/v1/videos",
        json={"model": "m", "callback_url": "http://127.0.0.1:9/x", "events": ["video.progress"]},
    )
    assert created.status_code == 422 and created.json()["error"]["param"] == "events"
    assert upstream.sim.created == []  # refused before anything went upstream


def test_redeliver_sends_the_same_event_again(service, upstream, hooks):
    task = upstream.add(duration=0.1, queued=0)
    reg = service.register(task, f"{hooks.url}/again").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    response = service.client.post(f"/v1/registrations/{reg['id']}/redeliver")
    assert response.status_code == 202, response.text
    eventually(lambda: len(hooks.at("/again")) == 2)
    first, second = hooks.at("/again")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    # The attempt is written once the receiver has answered: wait for the record.
    eventually(lambda: [a["attempt"] for a in service.attempts(reg["id"])] == [1, 2])


def test_registering_an_ended_task_delivers_at_once(service, upstream, hooks):
    task = upstream.add(duration=0.1, queued=0)
    first = service.register(task, f"{hooks.url}/one").json()
    eventually(lambda: service.registration(first["id"])["state"] == "delivered")
    polls = upstream.polls(task)
    late = service.register(task, f"{hooks.url}/two").json()
    assert late["task"]["status"] == "completed"
    eventually(lambda: hooks.at("/two"))
    ended = service.register(task, f"{hooks.url}/three", events=["video.failed"]).json()
    assert ended["state"] == "ended"
    assert upstream.polls(task) == polls


def test_a_slow_receiver_does_not_delay_the_others(make_service, upstream, hooks):
    service = make_service(delivery_timeout=5.0)
    hooks.receiver.plan("/slow", 200, delay=4.0)
    slow = upstream.add(duration=0.1, queued=0)
    fast = [upstream.add(duration=0.3, queued=0) for _ in range(5)]
    service.register(slow, f"{hooks.url}/slow")
    time.sleep(0.5)
    for task in fast:
        service.register(task, f"{hooks.url}/fast")
    eventually(lambda: len(hooks.at("/fast")) == 5, timeout=10)
    # The slow receiver records its delivery only after holding it for 4 s.
    assert hooks.at("/slow") == []
    eventually(lambda: hooks.at("/slow"))


def test_receiver_timeout_is_a_failed_attempt(make_service, upstream, hooks):
    service = make_service(delivery_timeout=0.5)
    hooks.receiver.plan("/hang", 200, delay=2.0)
    task = upstream.add(duration=0.1, queued=0)
    reg = service.register(task, f"{hooks.url}/hang").json()
    attempts = eventually(lambda: service.attempts(reg["id"]))
    assert attempts[0]["status_code"] is None and "timed out" in attempts[0]["error"]


def test_misbehaving_receivers_hold_nothing_up(make_service, upstream, hooks):
    rogue = Rogue().start()
    try:
        service = make_service(delivery_timeout=2.0, delivery_retry_schedule=(30.0,))
        bad = {}
        for path in ("/reset", "/flood", "/endless", "/garbage", "/silent"):
            task = upstream.add(duration=0.1, queued=0)
            bad[path] = service.register(task, f"{rogue.url}{path}").json()["id"]
        good = [upstream.add(duration=0.2, queued=0) for _ in range(5)]
        for task in good:
            service.register(task, f"{hooks.url}/fine")
        eventually(lambda: len(hooks.at("/fine")) == 5, timeout=10)
        first = {path: eventually(lambda r=reg: service.attempts(r)) for path, reg in bad.items()}
        # A body is read for a few KB at most, then the connection is dropped: of 1 GiB
        # offered, only what fits in the socket buffers ever leaves the rogue.
        assert first["/flood"][0]["status_code"] == 200
        assert first["/endless"][0]["status_code"] == 200
        assert rogue.sent["/flood"] < 32 << 20 and rogue.sent["/endless"] < 32 << 20
        for path in ("/reset", "/garbage", "/silent"):
            assert first[path][0]["status_code"] is None and first[path][0]["error"], path
        assert "timed out" in first["/silent"][0]["error"]
        assert service.client.get("/readyz").status_code == 200
    finally:
        rogue.stop()


def test_the_guard_is_applied_again_at_delivery(make_service, upstream, hooks):
    """Registered while private callbacks were allowed; delivered after the guard came on."""
    loose = make_service(callback_allow_private=True)
    task = upstream.add(duration=1.5, queued=0)
    port = hooks.url.rsplit(":", 1)[1]
    regs = [
        loose.register(task, f"{hooks.url}/literal").json()["id"],
        loose.register(task, f"http://localhost:{port}/named").json()["id"],
    ]
    loose.stop()
    strict = make_service(callback_allow_private=False, delivery_retry_schedule=(30.0,))
    for reg in regs:
        [attempt] = eventually(lambda r=reg: strict.attempts(r))
        assert attempt["status_code"] is None and "public" in attempt["error"], attempt
    assert hooks.at("/literal") == [] and hooks.at("/named") == []


@pytest.mark.slow
def test_failing_receivers_never_delay_a_fresh_webhook(make_service, upstream, hooks):
    service = make_service(
        delivery_concurrency=4, delivery_timeout=5.0, delivery_retry_schedule=(0.1,) * 20
    )
    # Slow and failing, each on an origin of its own (a circuit opens per origin after
    # five failures): their retries hog the slots.
    downs = [Receiver() for _ in range(6)]
    threads = [ServerThread(down.create_app()).start() for down in downs]
    try:
        for down, thread in zip(downs, threads, strict=True):
            down.plan("/down", 500, delay=3.0)
            service.register(upstream.add(duration=0.1, queued=0), f"{thread.url}/down")
        # Every first attempt has been made, and retries hold the slots.
        eventually(lambda: all(down.at("/down") for down in downs), 20)
        eventually(lambda: sum(len(down.at("/down")) for down in downs) >= 8, timeout=20)
        fresh = upstream.add(duration=0.3, queued=0)
        registered = time.time()
        service.register(fresh, f"{hooks.url}/fresh")
        [delivery] = eventually(lambda: hooks.at("/fresh"), timeout=10)
        assert delivery.received_at - registered < 2.0
    finally:
        for thread in threads:
            thread.stop()
