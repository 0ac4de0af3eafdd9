"""The ``ark`` family: Volcengine Ark's video generation tasks (Doubao Seedance),
``GET {base}/api/v3/contents/generations/tasks/{id}`` with ``Authorization: Bearer``.

Follows Ark's API reference, "查询视频生成任务 API" (volcengine.com/docs/82379/1521309,
version 2025-10) and its "公共错误码" (docs/82379/1299023), and the Ark runtime SDK's
``ContentGenerationTask`` type (volcengine-python-sdk, volcenginesdkarkruntime):

- a task: ``id`` (``cgt-2025…``), ``model``, ``status`` one of ``queued``, ``running``,
  ``succeeded``, ``failed``, ``cancelled`` (only queued tasks can be cancelled; they
  are deleted a day later) and ``expired`` (waited past its timeout), ``error`` null or
  ``{"code","message"}``, ``content.video_url`` once succeeded (kept 24 hours),
  ``created_at``/``updated_at`` in Unix seconds, ``seed``, ``resolution``, ``ratio``,
  ``duration``, ``usage``; there is no progress, so it reads 0 until the task ends;
- errors are ``{"error":{"code","message","param","type"}}``: a task that does not
  exist, or is older than the 7 days Ark keeps, is ``404``; a key missing or invalid
  ``401 AuthenticationError``; an overdue account or a key without access ``403``
  (``AccountOverdueError``, ``AccessDenied``); the rate limit ``429
  RateLimitExceeded…`` with no ``Retry-After`` (the poller backs off); ``500``
  ``InternalServiceError`` and ``503`` ``ServerOverloaded`` are passing.
"""

from __future__ import annotations

from typing import Any

from service import status, upstream
from service.status import Reading
from service.upstreams.dialect import Dialect


def read(task: dict[str, Any]) -> Reading:
    """One Ark task object."""
    return status.reading(
        task.get("status"),
        status.WORDS,
        progress=None,
        link=status.find_link(task, (("content", "video_url"),)),
        error=status.error_of(task),
    )


FAMILY = Dialect(
    name="ark",
    route="/api/v3/contents/generations/tasks/{id}",
    rules=upstream.Rules(),
    reader=read,
)
