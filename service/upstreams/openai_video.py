"""The ``openai-video`` family: ``GET {base}/v1/videos/{id}`` on OpenAI-style gateways
(octopusx, vanilla new-api and its forks, OpenAI itself).

Follows ../shared/UPSTREAM.md (read from new-api's source: relay/channel/task/*,
controller/video_proxy.go) and OpenAI's video object (openai-python ``types/video.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from service import status, upstream
from service.status import Reading
from service.upstream import Fetch


class OpenAIVideo:
    """OpenAI's video routes, as new-api gateways answer them."""

    name = "openai-video"
    openai_routes = True

    def status_path(self, task_id: str) -> str:
        return upstream.video_path(task_id)

    def headers(self) -> Mapping[str, str]:
        return {}

    def classify(
        self, status_code: int, headers: httpx.Headers, body: bytes, task_id: str
    ) -> Fetch:
        return upstream.classify(status_code, headers, body, task_id)

    def read(self, task: dict[str, Any]) -> Reading:
        return status.read(task)


FAMILY = OpenAIVideo()
