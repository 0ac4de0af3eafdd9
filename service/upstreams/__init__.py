"""Provider families: how each kind of upstream is asked for a task's status, and how
its answers read. One module per family; none of them touches the database.

A family answers the same questions for every provider:

- ``status_path(task_id)``: the path, under the upstream's base URL, that reads one task
  (the id is one percent-encoded segment and can never change the path);
- ``headers()``: the headers the provider requires beside ``Authorization: Bearer``
  (Runway's ``X-Runway-Version``);
- ``classify(status_code, headers, body, task_id)``: a ``Fetch`` whose outcome says what
  the answer means (a task object, "no such task", a rate limit with its wait, a refused
  key, a passing or a lasting error);
- ``read(task)``: the ``Reading`` of a task object (status word and kind, progress
  0 to 100, video link, error);
- ``openai_routes``: whether the provider takes OpenAI's video routes (create, remix,
  delete, content) so that status-proxy's gateway routes can forward to it.

The families: ``openai-video`` (OpenAI-style gateways: octopusx, new-api), ``new-api-task``
(new-api's own task route), ``ark`` (Volcengine Ark), ``runway`` and ``replicate``. Each
is a ``Dialect`` (service/upstreams/dialect.py) that states only what sets it apart; the
classification they share is service/upstream.py's ``classify_with``, and the reading
parts service/status.py's ``reading``. Each module's docstring names the documents it
follows; service/simulator/ plays each of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from service import status
from service.status import Reading
from service.upstream import Fetch


class Family(Protocol):
    """How one kind of provider is polled and read."""

    name: str
    openai_routes: bool

    def status_path(self, task_id: str) -> str: ...

    def headers(self) -> Mapping[str, str]: ...

    def classify(
        self, status_code: int, headers: Mapping[str, str], body: bytes, task_id: str
    ) -> Fetch: ...

    def read(self, task: dict[str, Any]) -> Reading: ...


def result(family: Family, task: dict[str, Any] | None) -> dict[str, Any]:
    """The webhook's ``result``: status-proxy's reading of ``data``, the same shape for
    every family: ``{"status": "completed" | "failed" | "in_progress", "progress": 0 to
    100 (100 once completed), "video_url": str | None, "error": {"code", "message"} |
    None}``."""
    return status.shape(family.read(task) if task is not None else None)


def family(name: str) -> Family:
    """The family of that name; raises KeyError for one that does not exist."""
    return FAMILIES[name]


def _families() -> dict[str, Family]:
    from service.upstreams import ark, new_api_task, openai_video, replicate, runway

    found: list[Family] = [
        openai_video.FAMILY, new_api_task.FAMILY, ark.FAMILY, runway.FAMILY, replicate.FAMILY,
    ]  # fmt: skip
    return {item.name: item for item in found}


FAMILIES: dict[str, Family] = _families()
