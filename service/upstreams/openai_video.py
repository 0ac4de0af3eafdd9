"""The ``openai-video`` family: ``GET {base}/v1/videos/{id}`` on OpenAI-style gateways
(octopusx, vanilla new-api and its forks, OpenAI itself).

Follows ../shared/UPSTREAM.md (read from new-api's source: relay/channel/task/*,
controller/video_proxy.go) and OpenAI's video object (openai-python ``types/video.py``).
Its answers, errors and readings are service/upstream.py's ``classify`` and
service/status.py's ``read``.
"""

from __future__ import annotations

from service import status, upstream
from service.upstreams.dialect import Dialect

FAMILY = Dialect(
    name="openai-video",
    route="/v1/videos/{id}",
    rules=upstream.OPENAI_VIDEO,
    reader=status.read,
    openai_routes=True,
)
