"""Polling the simulated upstream: once per task, adaptive, stopping when unneeded."""

import time

from tests.harness import eventually


def test_one_poll_per_task_however_many_registrations(make_service, upstream, hooks):
    service = make_service(poll_interval_min=0.5, poll_interval_max=0.5)
    shared = upstream.add(duration=60)
    alone = upstream.add(duration=60)
    for n in range(10):
        assert service.register(shared, f"{hooks.url}/r{n}").status_code == 201
    service.register(alone, f"{hooks.url}/alone")
    time.sleep(2.5)
    # Both tasks run on the same schedule; ten registrations cost no extra polls.
    assert abs(upstream.polls(shared) - upstream.polls(alone)) <= 1
    assert 3 <= upstream.polls(shared) <= 7


def test_first_poll_comes_right_after_registration(make_service, upstream, hooks):
    service = make_service(poll_interval_min=5, poll_interval_max=30)
    task = upstream.add(duration=60)
    service.register(task, f"{hooks.url}/h")
    eventually(lambda: upstream.polls(task) == 1, timeout=3)


def test_interval_backs_off_while_nothing_changes(make_service, upstream, hooks):
    service = make_service(poll_interval_min=0.2, poll_interval_max=1.0)
    still = upstream.add(duration=60, queued=60)  # stays queued: nothing moves
    service.register(still, f"{hooks.url}/h")
    time.sleep(4)
    # At the minimum that would be ~20 polls; backing off towards 1 s gives far fewer.
    assert 4 <= upstream.polls(still) <= 12


def test_polling_stops_when_no_registration_needs_the_task(service, upstream, hooks):
    task = upstream.add(duration=60)
    one = service.register(task, f"{hooks.url}/a").json()
    two = service.register(task, f"{hooks.url}/b").json()
    eventually(lambda: upstream.polls(task) >= 2)
    service.client.delete(f"/v1/registrations/{one['id']}")
    before = upstream.polls(task)
    eventually(lambda: upstream.polls(task) > before + 1)  # still needed by the second
    service.client.delete(f"/v1/registrations/{two['id']}")
    time.sleep(1.0)  # one in-flight poll may still land
    settled = upstream.polls(task)
    time.sleep(1.5)
    assert upstream.polls(task) == settled


def test_polling_stops_once_the_task_ends(service, upstream, hooks):
    task = upstream.add(duration=0.2, queued=0)
    reg = service.register(task, f"{hooks.url}/h").json()
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")
    settled = upstream.polls(task)
    time.sleep(1.5)
    assert upstream.polls(task) == settled


def test_status_words_of_other_gateways(service, upstream, hooks):
    words = {"queued": "NOT_START", "in_progress": "RUNNING", "completed": "SUCCEEDED"}
    task = upstream.add(duration=0.5, queued=0.2, words=words)
    service.register(task, f"{hooks.url}/w")
    [delivery] = eventually(lambda: hooks.at("/w"))
    assert delivery.json["type"] == "video.completed"
    assert delivery.json["data"]["status"] == "SUCCEEDED"  # the raw object, unchanged


def test_empty_placeholder_fields_do_not_fail_a_task(service, upstream, hooks):
    task = upstream.add(duration=0.6, queued=0.1, empty_fields=True)
    service.register(task, f"{hooks.url}/e")
    [delivery] = eventually(lambda: hooks.at("/e"))
    assert delivery.json["type"] == "video.completed"


def test_unknown_task_fails_after_the_grace(make_service, hooks):
    service = make_service(not_found_grace=1.0)
    reg = service.register("video_never_created", f"{hooks.url}/nf").json()
    [delivery] = eventually(lambda: hooks.at("/nf"))
    assert delivery.json["type"] == "video.failed"
    assert delivery.json["data"]["status"] == "failed"
    assert delivery.json["data"]["error"]["code"] == "status_proxy_not_found"
    eventually(lambda: service.registration(reg["id"])["state"] == "delivered")


def test_task_that_appears_within_the_grace_is_not_failed(make_service, upstream, hooks):
    service = make_service(not_found_grace=5.0)
    task = upstream.add(duration=0.3, queued=0, invisible_for=1.0)
    service.register(task, f"{hooks.url}/late")
    [delivery] = eventually(lambda: hooks.at("/late"))
    assert delivery.json["type"] == "video.completed"


def test_timeout_gives_the_task_up(make_service, upstream, hooks):
    service = make_service(task_timeout=1.0)
    task = upstream.add(duration=60)
    service.register(task, f"{hooks.url}/t")
    [delivery] = eventually(lambda: hooks.at("/t"))
    assert delivery.json["data"]["error"]["code"] == "status_proxy_timeout"
    # A new registration watches a given-up task afresh.
    again = service.register(task, f"{hooks.url}/t2").json()
    assert again["state"] == "active"
    before = upstream.polls(task)
    eventually(lambda: upstream.polls(task) > before)


def test_server_errors_back_off_without_losing_the_task(service, upstream, hooks):
    upstream.sim.faults.server_error = 1.0
    task = upstream.add(duration=0.3, queued=0)
    reg = service.register(task, f"{hooks.url}/s").json()
    eventually(lambda: upstream.polls(task) >= 2)
    time.sleep(0.5)
    assert hooks.at("/s") == [] and service.registration(reg["id"])["state"] == "active"
    upstream.sim.faults.server_error = 0.0
    [delivery] = eventually(lambda: hooks.at("/s"), timeout=20)
    assert delivery.json["type"] == "video.completed"


def test_bad_upstream_key_pauses_polling_and_readyz_says_so(make_service, upstream, hooks):
    service = make_service(upstream_api_key="sk-wrong")
    task = upstream.add(duration=0.3, queued=0)
    service.register(task, f"{hooks.url}/k")
    ready = eventually(
        lambda: service.client.get("/readyz").status_code == 503 and service.client.get("/readyz")
    )
    assert "polling paused" in " ".join(ready.json()["reasons"])
    assert "sk-wrong" not in ready.text
    polls = upstream.polls(task)
    time.sleep(1.5)
    assert upstream.polls(task) <= polls + 1  # paused: a probe at most
    assert hooks.at("/k") == []


def test_rate_limit_is_global(make_service, upstream, hooks):
    service = make_service(upstream_rate_limit=5, poll_interval_min=0.1, poll_interval_max=0.1)
    tasks = [upstream.add(duration=60) for _ in range(20)]
    for task in tasks:
        service.register(task, f"{hooks.url}/r")
    start = upstream.sim.requests
    time.sleep(3)
    # 20 tasks due every 0.1 s would want ~600 polls; the budget is 5/s plus a burst of 5.
    assert upstream.sim.requests - start <= 5 * 3 + 5 + 2
    assert all(upstream.polls(task) >= 1 for task in tasks[:10])
