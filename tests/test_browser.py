"""The dashboard in a real headless browser: Debian's chromium driven by Playwright."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import eventually

ARTIFACTS = Path(__file__).parent / "artifacts"
KEY = "browser-key"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'


def _progress(page, task: str) -> int:
    bar = page.locator(f'tr[data-task="{task}"] progress')
    return int(bar.get_attribute("value") or 0) if bar.count() else -1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dashboard_in_a_browser(browser_page, make_service, upstream, hooks):
    page = browser_page
    service = make_service(api_keys=[KEY])
    long_task = upstream.add(duration=14, queued=0)
    quick_task = upstream.add(duration=0.3, queued=0)
    failed_task = upstream.add(duration=0.3, queued=0, outcome="failed")
    hooks.receiver.plan("/flaky", 503)
    # What a customer would register (the README's screenshot is taken from this page).
    for task, path, metadata in (
        (failed_task, "/flaky", {"order_id": "A-10479", "customer": "Blue Harbor Studio"}),
        (quick_task, "/hooks/video", {"order_id": "A-10481", "plan": "pro"}),
        (long_task, "/hooks/video", {"order_id": "A-10482", "customer": "Northwind Films"}),
    ):
        created = service.register(task, f"{hooks.url}{path}", metadata=metadata)
        assert created.status_code == 201

    page.goto(f"{service.url}/dashboard")
    page.fill("#key", KEY)
    page.click("form.login button")
    page.wait_for_selector("table.tasks")
    page.evaluate("window.__stayed = true")  # gone if the page were reloaded

    first = eventually(lambda: _progress(page, long_task) > 0 and _progress(page, long_task))
    eventually(lambda: _progress(page, long_task) > first, timeout=20)
    assert page.evaluate("window.__stayed") is True  # refreshed in place
    eventually(lambda: "completed" in page.locator(f'tr[data-task="{quick_task}"]').inner_text())
    eventually(lambda: int(page.inner_text("#failures")) >= 1, timeout=20)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # Hostile metadata is shown as text, never run.
    hostile_task = upstream.add(duration=0.3, queued=0)
    assert (
        service.register(hostile_task, f"{hooks.url}/x", metadata={"note": XSS}).status_code == 201
    )
    eventually(lambda: page.locator(f'tr[data-task="{hostile_task}"] .meta').count() == 1)
    assert (
        page.locator(f'tr[data-task="{hostile_task}"] .meta')
        .inner_text()
        .startswith('{"note": "<script>')
    )

    page.click(f'tr[data-task="{quick_task}"] a')
    page.wait_for_selector("#redeliver")
    eventually(lambda: page.locator("table.attempts tbody tr.good").count() == 1)
    page.click("#redeliver")
    page.wait_for_selector("text=Redelivery queued")
    eventually(lambda: page.locator("table.attempts tbody tr.good").count() == 2, timeout=20)
    assert len(hooks.at("/hooks/video")) >= 2
    page.screenshot(path=str(ARTIFACTS / "dashboard-registration.png"), full_page=True)

    assert page.evaluate("window.__xss") is None and page.dialogs == []


def _chart_totals(page) -> dict[str, int]:
    return page.evaluate(
        """() => {
            const totals = {accepted: 0, failed: 0, dead: 0};
            for (const g of document.querySelectorAll("#hour-chart g.minute"))
                for (const k in totals) totals[k] += Number(g.dataset[k]);
            return totals;
        }"""
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_chart_and_recover_since_in_a_browser(browser_page, make_service, upstream, hooks):
    page = browser_page
    # Both failing registrations share one origin: short circuit cool-downs keep its probes
    # within the retry window, so each event makes its four attempts.
    service = make_service(api_keys=[KEY], circuit_cooldown=0.05, circuit_cooldown_max=0.1)
    hooks.receiver.plan("/down", 500)
    down = [upstream.add(duration=0.2, queued=0) for _ in range(2)]
    for task in down:
        assert service.register(task, f"{hooks.url}/down").status_code == 201
    assert (
        service.register(upstream.add(duration=0.2, queued=0), f"{hooks.url}/ok").status_code == 201
    )

    page.goto(f"{service.url}/dashboard")
    page.fill("#key", KEY)
    page.click("form.login button")
    page.wait_for_selector("#hour-chart")
    # The chart redraws in place as attempts fail and die: a spike to look at.
    eventually(lambda: _chart_totals(page)["dead"] == 2, timeout=30)
    assert _chart_totals(page) == {"accepted": 1, "failed": 6, "dead": 2}
    assert page.locator("#hour-chart rect.dead").count() >= 1
    assert page.locator("#hour-chart rect.failed").count() >= 1
    assert page.locator("#hour-chart polyline.latency").count() >= 1
    box = page.locator("#hour-chart").bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 150  # drawn, not collapsed
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-chart.png"), full_page=True)

    # The receiver is back: recover what died in the last hour.
    sent = len(hooks.at("/down"))  # 8, or fewer if the circuit held one back to the end
    hooks.receiver.plan("/down", 200)
    page.select_option("#since", "1")
    page.click("#recover")
    page.wait_for_selector("#recovered")
    assert page.inner_text("#recovered").startswith("2 deliveries queued again")
    eventually(lambda: _chart_totals(page)["accepted"] == 3, timeout=30)
    # What the chart showed stays as it was: those attempts died then.
    assert _chart_totals(page) == {"accepted": 3, "failed": 6, "dead": 2}
    ids = {d.headers["webhook-id"] for d in hooks.at("/down")}
    assert len(ids) == 2 and len(hooks.at("/down")) == sent + 2  # one more try each
    page.screenshot(path=str(ARTIFACTS / "dashboard-recovered.png"), full_page=True)
