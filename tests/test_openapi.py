"""/docs works on a closed network, and the OpenAPI document describes the webhooks."""

import re
from urllib.parse import urljoin

import pytest

from tests.harness import eventually

EVENT_FIELDS = {
    "id", "type", "timestamp", "registration_id", "task_id", "upstream", "metadata", "result",
    "data",
}  # fmt: skip


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_docs_page_loads_only_its_own_assets(service):
    page = service.client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(s.endswith("swagger-ui-bundle.js") for s in sources), sources
    assert any(s.endswith("swagger-ui.css") for s in sources), sources
    for source in sources:
        assert source.startswith("/"), f"{source} is not served by status-proxy"
        asset = service.client.get(urljoin(service.url, source))
        assert asset.status_code == 200, source
        assert len(asset.content) > 500, source
    assert "//cdn" not in page.text and "https://" not in page.text
    # Swagger UI would otherwise send the spec's address to its public validator.
    assert '"validatorUrl": null' in page.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_openapi_describes_each_webhook(service):
    document = service.client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    hooks = document["webhooks"]
    assert set(hooks) == {"video.completed", "video.failed", "video.progress"}
    schemas = document["components"]["schemas"]
    for name, item in hooks.items():
        post = item["post"]
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[1]]
        assert set(schema["properties"]) >= EVENT_FIELDS, name
        assert schema["properties"]["type"]["const"] == name
        headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
        assert "410" in post["responses"]
    result = schemas["WebhookResult"]["properties"]
    assert set(result) == {"status", "progress", "video_url", "error"}
    # The webhooks are documentation only: no route answers them.
    assert service.client.post("/video.completed", json={}).status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_docs_render_offline_in_a_browser(browser_page, service):
    """Swagger UI draws the operations and the webhooks with every request outside
    status-proxy refused, as on a closed network."""
    page = browser_page
    outside: list[str] = []

    def only_status_proxy(route):
        if route.request.url.startswith(service.url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", only_status_proxy)
    page.goto(f"{service.url}/docs")
    page.wait_for_selector(".opblock")
    eventually(lambda: "video.completed" in page.inner_text("body"))
    assert page.locator(".opblock").count() > 10
    assert outside == []
