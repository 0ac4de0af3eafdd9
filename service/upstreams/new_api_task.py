"""The ``new-api-task`` family: new-api's own task route, ``GET
{base}/v1/video/generations/{id}``, answered as ``{"code":"success","message":"",
"data":{…}}``.

Follows new-api's source (QuantumNous/new-api: router/video-router.go, relay/relay_task.go
``videoFetchByIDRespBodyBuilder`` and ``TaskModel2Dto``, dto/task.go ``TaskDto``,
model/task.go ``TaskStatus``) and ../shared/UPSTREAM.md, "Other routes":

- ``data`` is new-api's task row: ``task_id`` (the id asked for; ``id`` is new-api's
  row number), ``status`` in new-api's words ``NOT_START``, ``SUBMITTED``, ``QUEUED``,
  ``IN_PROGRESS``, ``SUCCESS``, ``FAILURE`` (and ``UNKNOWN``), ``progress`` as ``"50%"``,
  ``result_url`` (left out until there is one), ``fail_reason``, ``submit_time``,
  ``start_time``, ``finish_time``, and the provider's raw answer in ``data``;
- for Gemini and Vertex channels new-api asks the provider at once and answers
  ``{"task_id","status":"queued|processing|succeeded|failed","url","format","error"}``
  inside the same wrapper;
- no such task (an unknown id, another user's task, the instant after a create):
  ``400 {"code":"task_not_exist","message":"task_not_exist","data":null}``; a database
  failure ``500 get_task_failed`` (passing); ``{"code":"success","data":null}`` is no task;
- a refused key: ``401 {"error":{"message":"Invalid token …","type":"new_api_error"}}``;
  a banned user or a key limited to other models: ``403`` in the same shape;
- new-api itself never answers 429 here; a proxy in front may, with or without
  ``Retry-After``.
"""

from __future__ import annotations

from typing import Any

from service import status, upstream
from service.status import Reading
from service.upstreams.dialect import Dialect


def task_of(body: Any, task_id: str) -> dict[str, Any] | None:
    """The task row inside new-api's wrapper, when it is this task's."""
    data = status.unwrap(body)
    return data if status.is_task_of(data, task_id, key="task_id") else None


def read(task: dict[str, Any]) -> Reading:
    """new-api's task row (or the Gemini/Vertex view) of one task."""
    return status.reading(
        task.get("status"),
        status.WORDS,
        progress=status.percent(task.get("progress")),
        link=status.find_link(task, (("result_url",), ("url",))),
        error=status.error_of(task),
    )


FAMILY = Dialect(
    name="new-api-task",
    route="/v1/video/generations/{id}",
    rules=upstream.Rules(
        task=task_of, not_found=upstream.gateway_not_found, lasting=upstream.gateway_lasting
    ),
    reader=read,
)
