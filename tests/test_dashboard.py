"""The dashboard over HTTP: keys, escaping, filters, counters and redelivery."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.harness import eventually, sql

KEYS = ["dash-key-one", "dash-key-two"]
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'


@pytest.fixture
def keyed(make_service):
    return make_service(api_keys=KEYS)


def dashboard_as(url: str, key: str) -> str:
    """The dashboard's front page as a browser signed in with ``key`` sees it."""
    with httpx.Client(base_url=url, timeout=15) as client:
        answer = client.post("/dashboard/login", data={"key": key})
        assert answer.status_code == 303, answer.text
        return client.get("/dashboard").text


def test_dashboard_asks_for_a_key_and_keeps_a_session_token(keyed):
    anonymous = httpx.get(f"{keyed.url}/dashboard")
    assert anonymous.status_code == 401 and 'name="key"' in anonymous.text
    wrong = httpx.post(f"{keyed.url}/dashboard/login", data={"key": "nope"})
    assert wrong.status_code == 401 and "not one of" in wrong.text
    assert "set-cookie" not in wrong.headers

    answer = httpx.post(f"{keyed.url}/dashboard/login", data={"key": KEYS[0]})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    token = answer.cookies["status_proxy_dashboard"]
    assert KEYS[0] not in cookie  # the key itself never leaves the login request

    cookies = {"status_proxy_dashboard": token}
    assert httpx.get(f"{keyed.url}/dashboard", cookies=cookies).status_code == 200
    # Each login is its own session, with its own token.
    again = httpx.post(f"{keyed.url}/dashboard/login", data={"key": KEYS[0]})
    assert again.cookies["status_proxy_dashboard"] != token
    assert "Max-Age=43200" in again.headers["set-cookie"]
    forged = {"status_proxy_dashboard": "00" * 32}
    assert httpx.get(f"{keyed.url}/dashboard", cookies=forged).status_code == 401
    assert (
        httpx.get(f"{keyed.url}/dashboard", cookies={"status_proxy_dashboard": "zz"}).status_code
        == 401
    )
    # The token is no key for the API, and a Bearer key works on the dashboard too.
    v1 = httpx.get(f"{keyed.url}/v1/registrations", headers={"Authorization": f"Bearer {token}"})
    assert v1.status_code == 401
    bearer = {"Authorization": f"Bearer {KEYS[1]}"}
    assert httpx.get(f"{keyed.url}/dashboard", headers=bearer).status_code == 200
    for path in ("/dashboard/registrations/reg_x", "/dashboard/registrations/reg_x/redeliver"):
        method = "POST" if path.endswith("redeliver") else "GET"
        assert httpx.request(method, f"{keyed.url}{path}").status_code == 401

    out = httpx.post(f"{keyed.url}/dashboard/logout", cookies=cookies)
    assert out.status_code == 303 and 'status_proxy_dashboard=""' in out.headers["set-cookie"]
    # Logging out ended the session on the server: the old cookie opens nothing now,
    # while the other login's session goes on.
    assert httpx.get(f"{keyed.url}/dashboard", cookies=cookies).status_code == 401
    other = {"status_proxy_dashboard": again.cookies["status_proxy_dashboard"]}
    assert httpx.get(f"{keyed.url}/dashboard", cookies=other).status_code == 200


def test_sessions_are_shared_by_replicas_and_expire(make_service, db_url):
    first = make_service(api_keys=KEYS)
    second = make_service(api_keys=KEYS)  # another replica on the same database
    login = httpx.post(f"{first.url}/dashboard/login", data={"key": KEYS[1]})
    cookies = {"status_proxy_dashboard": login.cookies["status_proxy_dashboard"]}
    assert httpx.get(f"{second.url}/dashboard", cookies=cookies).status_code == 200
    httpx.post(f"{second.url}/dashboard/logout", cookies=cookies)
    assert httpx.get(f"{first.url}/dashboard", cookies=cookies).status_code == 401

    login = httpx.post(f"{first.url}/dashboard/login", data={"key": KEYS[1]})
    cookies = {"status_proxy_dashboard": login.cookies["status_proxy_dashboard"]}
    assert httpx.get(f"{first.url}/dashboard", cookies=cookies).status_code == 200
    [(stored,)] = sql(db_url, "SELECT id FROM dashboard_sessions")[0]
    assert stored != cookies["status_proxy_dashboard"]  # only its hash is kept
    sql(db_url, "UPDATE dashboard_sessions SET expires_at = 1")  # twelve hours later
    assert httpx.get(f"{second.url}/dashboard", cookies=cookies).status_code == 401


def test_a_removed_key_ends_its_sessions(make_service):
    before = make_service(api_keys=KEYS)
    login = httpx.post(f"{before.url}/dashboard/login", data={"key": KEYS[1]})
    cookies = {"status_proxy_dashboard": login.cookies["status_proxy_dashboard"]}
    after = make_service(api_keys=KEYS[:1])  # restarted without that key
    assert httpx.get(f"{after.url}/dashboard", cookies=cookies).status_code == 401


def test_each_key_sees_its_own_registrations(keyed, upstream, hooks):
    task = upstream.add(duration=30)
    assert keyed.register(task, f"{hooks.url}/mine").status_code == 201
    mine = dashboard_as(keyed.url, KEYS[0])
    theirs = dashboard_as(keyed.url, KEYS[1])
    assert task in mine and task not in theirs


def test_every_value_is_escaped_and_no_inline_script_may_run(service, upstream, hooks):
    task = upstream.add(duration=0.3, queued=0, outcome="failed")
    created = service.register(task, f"{hooks.url}/x?q=<b>", metadata={"note": XSS})
    assert created.status_code == 201, created.text
    registration = created.json()["id"]
    eventually(lambda: hooks.at("/x"))
    for path in ("/dashboard", f"/dashboard/registrations/{registration}"):
        page = httpx.get(f"{service.url}{path}")
        assert page.status_code == 200
        assert "<script>window" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page.text
        # Scripts come from our own static file only, never inline.
        assert re.findall(r"<script[^>]*>", page.text) == [
            '<script src="/dashboard/static/dashboard.js" defer>'
        ]
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_filters_counters_and_attempts(service, upstream, hooks):
    done = upstream.add(duration=0.2, queued=0)
    running = upstream.add(duration=60, queued=0)
    hooks.receiver.plan("/fail", 500)
    assert service.register(done, f"{hooks.url}/fail").status_code == 201
    assert service.register(running, f"{hooks.url}/ok").status_code == 201
    eventually(lambda: len(hooks.at("/fail")) >= 2, timeout=20)

    def view(state: str) -> str:
        answer = httpx.get(f"{service.url}/dashboard", params={"state": state})
        assert answer.status_code == 200
        return answer.text

    # The filter is the registration's state: the done task's webhook is still being
    # retried, so its registration is active, as its row says.
    assert done in view("active") and running in view("active")
    assert done not in view("delivered") and done not in view("failed")
    assert done in view("all") and running in view("all")
    assert done in view("bogus")  # an unknown filter shows everything
    active = view("active")
    assert "Each row is a registration" in active and "waiting for its task to end" in active
    for row in re.findall(r'<tr data-task="[^"]+">.*?</tr>', active, re.S):
        assert '<span class="state">active</span>' in row

    page = view("all")
    assert re.search(r'id="active-tasks">1<', page)
    assert re.search(r'id="pending-deliveries">1<', page)  # the failing one, waiting to retry
    failures = int(re.search(r'id="failures">(\d+)<', page).group(1))
    assert failures >= 2
    assert re.search(r'id="upstream">ok: last answer \d+s ago<', page)

    # A registration whose webhook was accepted is delivered, and no longer active.
    ok = upstream.add(duration=0.2, queued=0)
    assert service.register(ok, f"{hooks.url}/ok").status_code == 201
    eventually(lambda: ok in view("delivered"))
    assert ok not in view("active")


def test_redeliver_from_the_dashboard(service, upstream, hooks):
    task = upstream.add(duration=0.2, queued=0)
    registration = service.register(task, f"{hooks.url}/again").json()["id"]
    page = f"{service.url}/dashboard/registrations/{registration}"
    # The attempt is recorded once the receiver has answered.
    eventually(lambda: httpx.get(page).text.count("<tr class=") == 1)

    foreign = httpx.post(
        f"{service.url}/dashboard/registrations/{registration}/redeliver",
        headers={"Origin": "https://elsewhere.example"},
    )
    assert foreign.status_code == 403
    answer = httpx.post(
        f"{service.url}/dashboard/registrations/{registration}/redeliver",
        headers={"Origin": service.url},
    )
    assert answer.status_code == 303
    assert answer.headers["location"].endswith("?done=redelivered")
    eventually(lambda: len(hooks.at("/again")) == 2)
    after = eventually(
        lambda: (
            (page := httpx.get(f"{service.url}{answer.headers['location']}").text).count(
                "<tr class="
            )
            == 2
            and page
        )
    )
    assert "Redelivery queued" in after
    missing = httpx.get(f"{service.url}/dashboard/registrations/reg_nope")
    assert missing.status_code == 404


def test_redeliver_before_the_task_ends_is_explained(service, upstream, hooks):
    task = upstream.add(duration=60, queued=0)
    registration = service.register(task, f"{hooks.url}/later").json()["id"]
    answer = httpx.post(f"{service.url}/dashboard/registrations/{registration}/redeliver")
    assert answer.status_code == 409 and "has not ended yet" in answer.text


def test_a_registration_says_when_its_next_attempt_goes(make_service, upstream, hooks):
    service = make_service(delivery_retry_schedule=(600.0,))
    hooks.receiver.plan("/later", 503)
    task = upstream.add(duration=0.1, queued=0)
    registration = service.register(task, f"{hooks.url}/later").json()["id"]
    page = f"{service.url}/dashboard/registrations/{registration}"
    # The first attempt is written (the retry is scheduled) before the page is read:
    # while it is in flight, the event's next attempt is the one going now.
    url = service.settings.database_url
    eventually(lambda: sql(url, "SELECT count(*) FROM attempts")[0] == [(1,)])
    eventually(lambda: "Next attempt" in httpx.get(page).text)
    shown = re.search(r'id="next-attempt">([^<]+)<', httpx.get(page).text).group(1)
    [(next_at,)] = sql(service.settings.database_url, "SELECT next_attempt_at FROM events")[0]
    assert shown == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(next_at))


def _minutes(page: str) -> list[dict[str, int]]:
    """The chart's per-minute figures as the page draws them."""
    found = re.findall(
        r'<g class="minute" data-minute="(\d\d:\d\d)" data-accepted="(\d+)" data-failed="(\d+)" '
        r'data-dead="(\d+)"(?: data-latency-ms="(\d+)")?>',
        page,
    )
    return [
        {"accepted": int(a), "failed": int(f), "dead": int(d), "latency_ms": int(ms or -1)}
        for _, a, f, d, ms in found
    ]


def _totals(page: str) -> dict[str, int]:
    minutes = _minutes(page)
    return {k: sum(m[k] for m in minutes) for k in ("accepted", "failed", "dead")}


def test_chart_of_the_last_hour_counts_attempts_by_outcome(keyed, upstream, hooks):
    hooks.receiver.plan("/down", 500)
    hooks.receiver.plan("/gone", 410)
    with httpx.Client(
        base_url=keyed.url, headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=15
    ) as mine:
        regs = []
        for path in ("/ok", "/ok", "/down", "/gone"):
            task = upstream.add(duration=0.1, queued=0)
            answer = mine.post(
                "/v1/registrations", json={"task_id": task, "callback_url": f"{hooks.url}{path}"}
            )
            regs.append(answer.json()["id"])
        for reg in regs:
            eventually(
                lambda r=reg: mine.get(f"/v1/registrations/{r}").json()["state"] != "active",
                timeout=20,
            )
    page = eventually(
        lambda: (text := dashboard_as(keyed.url, KEYS[0])) and _totals(text)["dead"] == 2 and text
    )
    minutes = _minutes(page)
    assert len(minutes) == 60
    # Two accepted; /down: three failed tries, then a dead fourth; /gone: dead at once.
    assert _totals(page) == {"accepted": 2, "failed": 3, "dead": 2}
    assert max(m["latency_ms"] for m in minutes) >= 0  # a latency for the accepted minute(s)
    assert re.search(r'<svg id="hour-chart"[^>]*data-total="7"', page)
    # Another key's chart is its own.
    assert _totals(dashboard_as(keyed.url, KEYS[1])) == {"accepted": 0, "failed": 0, "dead": 0}


def test_recover_since_from_the_dashboard(keyed, upstream, hooks):
    hooks.receiver.plan("/down", 500)
    with httpx.Client(
        base_url=keyed.url, headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=15
    ) as mine:
        task = upstream.add(duration=0.1, queued=0)
        reg = mine.post(
            "/v1/registrations", json={"task_id": task, "callback_url": f"{hooks.url}/down"}
        ).json()["id"]
        eventually(lambda: mine.get(f"/v1/registrations/{reg}").json()["state"] == "failed", 20)
        hooks.receiver.plan("/down", 200)
        with httpx.Client(base_url=keyed.url, timeout=15) as browser:
            assert browser.post("/dashboard/login", data={"key": KEYS[1]}).status_code == 303
            assert 'id="recover"' in browser.get("/dashboard").text
            theirs = browser.post("/dashboard/recover", data={"hours": "1"})
            assert theirs.headers["location"] == "/dashboard?recovered=0"
            browser.cookies.clear()
            assert browser.post("/dashboard/login", data={"key": KEYS[0]}).status_code == 303
            foreign = browser.post(
                "/dashboard/recover", data={"hours": "1"},
                headers={"Origin": "https://elsewhere.example"},
            )  # fmt: skip
            assert foreign.status_code == 403
            answer = browser.post("/dashboard/recover", data={"hours": "1"})
            assert answer.status_code == 303
            assert answer.headers["location"] == "/dashboard?recovered=1"
            shown = browser.get(answer.headers["location"]).text
            assert re.search(r'id="recovered">1 delivery queued again', shown)
        eventually(lambda: mine.get(f"/v1/registrations/{reg}").json()["state"] == "delivered")
    assert httpx.post(f"{keyed.url}/dashboard/recover", data={"hours": "1"}).status_code == 401


def test_open_circuits_show_to_the_key_whose_receiver_it_is(make_service, upstream, hooks):
    service = make_service(api_keys=KEYS, circuit_cooldown=60.0)
    hooks.receiver.plan("/down", 500)
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=15
    ) as mine:
        for _ in range(5):
            task = upstream.add(duration=0.1, queued=0)
            hook = {"task_id": task, "callback_url": f"{hooks.url}/down"}
            assert mine.post("/v1/registrations", json=hook).status_code == 201
    origin = f"http://127.0.0.1:{httpx.URL(hooks.url).port}"
    page = eventually(
        lambda: (text := dashboard_as(service.url, KEYS[0])) and 'id="circuits"' in text and text
    )
    assert re.search(rf'<td class="origin">{re.escape(origin)}</td>', page)
    # Another client's receivers are not the other key's to see.
    assert 'id="circuits"' not in dashboard_as(service.url, KEYS[1])
