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
    hostile_task = upstream.add(duration=0.3, queued=0, outcome="failed")
    hooks.receiver.plan("/flaky", 503)
    for task, path, extra in (
        (long_task, "/ok", {"metadata": {"team": "video"}}),
        (quick_task, "/ok", {}),
        (hostile_task, "/flaky", {"metadata": {"note": XSS}}),
    ):
        assert service.register(task, f"{hooks.url}{path}", **extra).status_code == 201

    page.goto(f"{service.url}/dashboard")
    page.fill("#key", KEY)
    page.click("form.login button")
    page.wait_for_selector("table.tasks")
    assert (
        page.locator(f'tr[data-task="{hostile_task}"] .meta')
        .inner_text()
        .startswith('{"note": "<script>')
    )  # shown as text, not run
    page.evaluate("window.__stayed = true")  # gone if the page were reloaded

    first = eventually(lambda: _progress(page, long_task) > 0 and _progress(page, long_task))
    eventually(lambda: _progress(page, long_task) > first, timeout=20)
    assert page.evaluate("window.__stayed") is True  # refreshed in place
    eventually(lambda: "completed" in page.locator(f'tr[data-task="{quick_task}"]').inner_text())
    eventually(lambda: int(page.inner_text("#failures")) >= 1, timeout=20)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    page.click(f'tr[data-task="{quick_task}"] a')
    page.wait_for_selector("#redeliver")
    eventually(lambda: page.locator("table.attempts tbody tr.good").count() == 1)
    page.click("#redeliver")
    page.wait_for_selector("text=Redelivery queued")
    eventually(lambda: page.locator("table.attempts tbody tr.good").count() == 2, timeout=20)
    assert len(hooks.at("/ok")) >= 2
    page.screenshot(path=str(ARTIFACTS / "dashboard-registration.png"), full_page=True)

    assert page.evaluate("window.__xss") is None and page.dialogs == []
