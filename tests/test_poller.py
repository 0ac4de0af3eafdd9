"""Polling the simulated upstream: once per task, adaptive, stopping when unneeded."""

import logging
import time
import uuid

from tests.harness import UPSTREAM_KEY, eventually


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
    assert upstream.polls(task) <= polls + 2  # paused: one probe a second at most
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


class Counting(logging.Handler):
    """Counts the records of one logger that contain a phrase."""

    def __init__(self, logger, phrase):
        super().__init__(logging.DEBUG)
        self.logger, self.phrase, self.count = logging.getLogger(logger), phrase, 0

    def emit(self, record):
        self.count += self.phrase in record.getMessage()

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


def test_a_404_counts_as_no_such_task_too(make_service, upstream, hooks):
    upstream.sim.faults.not_found_status = 404
    service = make_service(not_found_grace=3.0)
    late = upstream.add(duration=0.3, queued=0, invisible_for=1.0)
    service.register(late, f"{hooks.url}/late")
    service.register("video_never_created", f"{hooks.url}/never")
    [delivery] = eventually(lambda: hooks.at("/late"))
    assert delivery.json["type"] == "video.completed"
    [delivery] = eventually(lambda: hooks.at("/never"))
    assert delivery.json["data"]["error"]["code"] == "status_proxy_not_found"


def test_another_400_is_an_upstream_error_not_a_missing_task(make_service, upstream, hooks):
    service = make_service(not_found_grace=0.5)
    upstream.sim.faults.bad_request = 1.0
    task = upstream.add(duration=0.3, queued=0)
    reg = service.register(task, f"{hooks.url}/b").json()
    eventually(lambda: upstream.polls(task) >= 2)
    time.sleep(1.0)  # twice the grace: a missing task would have been failed by now
    assert hooks.at("/b") == [] and service.registration(reg["id"])["state"] == "active"
    upstream.sim.faults.bad_request = 0.0
    [delivery] = eventually(lambda: hooks.at("/b"), timeout=20)
    assert delivery.json["type"] == "video.completed"


def test_timeouts_back_off_the_task_without_failing_it(make_service, upstream, hooks):
    service = make_service(upstream_timeout=0.3)
    upstream.sim.faults.latency = 1.0
    task = upstream.add(duration=0.5, queued=0)
    reg = service.register(task, f"{hooks.url}/slow")
    eventually(lambda: upstream.polls(task) >= 2)
    time.sleep(0.5)
    assert hooks.at("/slow") == [] and service.registration(reg.json()["id"])["state"] == "active"
    upstream.sim.faults.latency = 0.0
    [delivery] = eventually(lambda: hooks.at("/slow"), timeout=20)
    assert delivery.json["type"] == "video.completed"


def settled(upstream, quiet: float = 0.5) -> int:
    """The simulator's request count once it has not moved for ``quiet`` seconds (a
    loaded machine delivers requests already in flight late); no time is asserted."""

    def still() -> int | None:
        before = upstream.sim.requests
        time.sleep(quiet)
        return before if upstream.sim.requests == before else None

    return eventually(still, timeout=30, interval=0)


def test_429_without_retry_after_slows_every_task_then_recovers(make_service, upstream, hooks):
    service = make_service(poll_interval_min=0.1, poll_interval_max=0.1)
    tasks = [upstream.add(duration=4.0, queued=0) for _ in range(10)]
    upstream.sim.faults.rate_limit = 1.0  # every answer is a 429, with no Retry-After
    for task in tasks:
        service.register(task, f"{hooks.url}/r")
    eventually(lambda: upstream.sim.requests >= 1)
    # The polls sent before the first 429 can land late on a loaded machine: count from
    # after the first probe (sent once the first pause ends), when they all have.
    early = settled(upstream)
    eventually(lambda: upstream.sim.requests > early, timeout=30)
    start = settled(upstream)
    time.sleep(2.0)
    # Ten tasks due every 0.1 s would make ~200 requests; paused, one probe goes at a
    # time, and the pause after a second 429 is 2 to 4 s.
    assert upstream.sim.requests - start <= 2
    upstream.sim.faults.rate_limit = 0.0
    eventually(lambda: len(hooks.at("/r")) == 10, timeout=30)
    assert {d.json["type"] for d in hooks.at("/r")} == {"video.completed"}


def test_retry_after_on_a_429_is_honoured_for_all_polling(make_service, upstream, hooks):
    service = make_service(poll_interval_min=0.1, poll_interval_max=0.1)
    upstream.sim.faults.rate_limit = 1.0
    upstream.sim.faults.retry_after = "2"
    tasks = [upstream.add(duration=60) for _ in range(5)]
    for task in tasks:
        service.register(task, f"{hooks.url}/ra")
    eventually(lambda: upstream.sim.requests >= 1)
    first = upstream.sim.requests
    time.sleep(1.5)
    assert upstream.sim.requests - first <= 5  # what was already in flight, nothing new


def test_a_refused_key_pauses_logs_once_and_resumes_by_itself(make_service, upstream, hooks):
    upstream.sim.api_key = "sk-not-ours"
    service = make_service()
    task = upstream.add(duration=0.3, queued=0)
    with Counting("service.poller", "polling paused") as alarms:
        service.register(task, f"{hooks.url}/rot")
        eventually(lambda: service.client.get("/readyz").status_code == 503)
        time.sleep(2.5)  # several probes fail meanwhile
        assert alarms.count == 1
    upstream.sim.api_key = UPSTREAM_KEY  # the gateway takes our key again
    eventually(lambda: service.client.get("/readyz").status_code == 200, timeout=10)
    [delivery] = eventually(lambda: hooks.at("/rot"))
    assert delivery.json["type"] == "video.completed"


def test_completed_without_a_video_is_polled_a_few_more_times(make_service, upstream, hooks):
    service = make_service(empty_video_retries=3)
    task = upstream.add(duration=0.2, queued=0, no_video=True)
    service.register(task, f"{hooks.url}/nv")
    [delivery] = eventually(lambda: hooks.at("/nv"))
    assert delivery.json["type"] == "video.completed"
    assert not delivery.json["data"].get("video_url")
    polls = upstream.polls(task)
    assert polls >= 4  # the first "completed" answer, then three more looks
    time.sleep(1.0)
    assert upstream.polls(task) == polls  # and then no more


def test_an_unknown_status_word_is_in_progress_and_logged_once(service, upstream, hooks):
    word = f"WAITING_FOR_GPU_{uuid.uuid4().hex[:6].upper()}"  # logged once per process
    words = {"queued": word, "in_progress": word}
    with Counting("service.status", word) as logged:
        task = upstream.add(duration=1.0, queued=0.3, words=words)
        service.register(task, f"{hooks.url}/u")
        [delivery] = eventually(lambda: hooks.at("/u"))
    assert delivery.json["type"] == "video.completed"
    assert upstream.polls(task) >= 3
    assert logged.count == 1
