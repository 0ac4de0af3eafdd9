"""Retention: ended registrations, their attempts and unneeded snapshots go; active work stays."""

import time

from tests.harness import eventually, sql


def counts(service):
    [row] = sql(
        service.settings.database_url,
        "SELECT (SELECT count(*) FROM registrations), (SELECT count(*) FROM events),"
        " (SELECT count(*) FROM attempts), (SELECT count(*) FROM tasks)",
    )[0]
    return tuple(row)


def test_ended_work_is_purged_and_active_work_kept(make_service, upstream, hooks):
    service = make_service(retention=1.0)
    long = upstream.add(duration=60)
    kept = service.register(long, f"{hooks.url}/long").json()
    done = upstream.add(duration=0.1, queued=0)
    gone = service.register(done, f"{hooks.url}/done").json()
    eventually(lambda: service.registration(gone["id"])["state"] == "delivered")
    assert len(service.attempts(gone["id"])) == 1
    # Past the retention, the delivered registration, its event and attempt, and the
    # ended task's snapshot are purged; the active registration and its task stay.
    eventually(lambda: service.client.get(f"/v1/registrations/{gone['id']}").status_code == 404)
    eventually(lambda: counts(service) == (1, 0, 0, 1))
    assert service.registration(kept["id"])["state"] == "active"
    assert service.client.get(f"/v1/videos/{done}").status_code == 200  # fetched through


def test_the_database_stays_bounded_under_steady_load(make_service, upstream, hooks):
    service = make_service(retention=1.0)
    registered, seen = 0, []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        for _ in range(5):
            service.register(upstream.add(duration=0.1, queued=0), f"{hooks.url}/steady")
        registered += 5
        time.sleep(0.25)
        seen.append(counts(service)[0])
    # Each registration is kept about a second after its webhook, and purges run every
    # half second: the table holds the last few seconds' worth, not everything.
    assert len(hooks.at("/steady")) >= registered / 2
    assert max(seen[-6:]) < registered / 2, (registered, seen)


def test_idempotency_keys_expire_after_a_day(make_service, upstream):
    service = make_service(retention=1.0)  # purges run every half second
    first = service.client.post("/v1/videos", json={"model": "m"}, headers={"Idempotency-Key": "k"})
    assert first.status_code == 200
    url = service.settings.database_url
    assert sql(url, "SELECT state FROM idempotency_keys")[0] == [("done",)]
    # A day later (moved back in time here), the key is purged and free again.
    sql(url, f"UPDATE idempotency_keys SET expires_at = {time.time() - 1}")
    eventually(lambda: sql(url, "SELECT count(*) FROM idempotency_keys")[0] == [(0,)])
    again = service.client.post("/v1/videos", json={"model": "m"}, headers={"Idempotency-Key": "k"})
    assert again.json()["id"] != first.json()["id"]


def test_videos_leave_the_list_after_the_retention(make_service, upstream):
    service = make_service(retention=1.0)
    created = service.client.post("/v1/videos", json={"model": "m"}).json()["id"]
    assert [v["id"] for v in service.client.get("/v1/videos").json()["data"]] == [created]
    eventually(lambda: service.client.get("/v1/videos").json()["data"] == [])
    url = service.settings.database_url
    assert sql(url, "SELECT count(*) FROM owned_videos")[0] == [(0,)]
