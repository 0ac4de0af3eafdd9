"""A provider family made of what sets it apart: its status route, the headers it
requires, the rules its answers follow (service/upstream.py, ``Rules``) and how a task
object of it reads (service/status.py, ``reading``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from service import upstream
from service.status import Reading
from service.upstream import Fetch


@dataclass(slots=True)
class Dialect:
    """One family: ``route`` is the status path under the base URL with ``{id}`` for the
    task's id (one percent-encoded segment, which can never change the path)."""

    name: str
    route: str
    rules: upstream.Rules
    reader: Callable[[dict[str, Any]], Reading]
    required: Mapping[str, str] = field(default_factory=dict)
    openai_routes: bool = False

    def status_path(self, task_id: str) -> str:
        return self.route.format(id=quote(task_id, safe=""))

    def headers(self) -> Mapping[str, str]:
        return dict(self.required)

    def classify(
        self, status_code: int, headers: Mapping[str, str], body: bytes, task_id: str
    ) -> Fetch:
        return upstream.classify_with(self.rules, status_code, headers, body, task_id)

    def read(self, task: dict[str, Any]) -> Reading:
        return self.reader(task)
