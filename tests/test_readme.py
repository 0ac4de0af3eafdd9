"""The README's "Use it from the OpenAI SDK" example runs as written: its webhook handler
is served, its client code creates, lists and downloads through a live status-proxy, and
the handler verifies the webhook and downloads the video it announces."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import httpx
import pytest

from service.simulator import video_bytes
from tests.harness import ServerThread, eventually

README = Path(__file__).resolve().parent.parent / "README.md"


def sdk_blocks() -> list[str]:
    """The Python blocks of the README's SDK section, in order."""
    text = README.read_text()
    section = text.split("### Use it from the OpenAI SDK", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_has_the_handler_and_the_client():
    handler, client = sdk_blocks()
    assert "webhook.verify(" in handler and "download_content" in handler
    assert "extra_body" in client and "videos.list(" in client


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_readme_sdk_example_runs(make_service, upstream, tmp_path, monkeypatch):
    service = make_service(api_keys=["readme-key"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_URL", service.url)
    monkeypatch.setenv("GATEWAY_KEY", "readme-key")
    mine = httpx.get(
        f"{service.url}/v1/webhook_secret", headers={"Authorization": "Bearer readme-key"}
    )
    monkeypatch.setenv("WEBHOOK_SECRET", mine.json()["secret"])
    handler, client = sdk_blocks()
    namespace: dict[str, object] = {"__name__": "readme_example"}
    with warnings.catch_warnings():  # the SDK marks its video methods deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        exec(compile(handler, "README.md (handler)", "exec"), namespace)
        hooks = ServerThread(namespace["app"]).start()
        try:
            monkeypatch.setenv("CALLBACK_URL", f"{hooks.url}/hooks/video")
            exec(compile(client, "README.md (client)", "exec"), namespace)
            fox = tmp_path / "fox.mp4"
            assert fox.read_bytes() == video_bytes(0, fox.stat().st_size)
            # The webhook reached the README's handler, which verified it and downloaded.
            saved = tmp_path / "order-42.mp4"
            eventually(lambda: saved.exists() and saved.stat().st_size > 0, timeout=20)
            eventually(lambda: saved.read_bytes() == fox.read_bytes(), timeout=10)
        finally:
            hooks.stop()
