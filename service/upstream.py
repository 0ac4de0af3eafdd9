"""The upstream video API: what one request for a task's status comes back with."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import httpx
from pydantic import SecretStr

from service import retry

# "unreachable": no connection (a name that does not resolve, refused, unroutable);
# "timeout": connected, or tried to, and waited past the timeout; "error": an answer
# that is no status object, or a connection that broke.
Outcome = Literal[
    "ok", "not_found", "rate_limited", "unauthorized", "error", "timeout", "unreachable"
]

MAX_BODY = 1024 * 1024  # a status object is small; refuse to hold more


@dataclass(frozen=True, slots=True)
class Fetch:
    """One answer to ``GET /v1/videos/{task_id}``, classified."""

    outcome: Outcome
    status_code: int | None = None
    body: bytes = b""
    video: dict[str, Any] | None = None
    retry_after: float | None = None
    detail: str = ""


def video_path(task_id: str) -> str:
    """The upstream path of a task; the id is one encoded segment and cannot change the path."""
    return "/v1/videos/" + quote(task_id, safe="")


def is_task_not_exist(body: Any) -> bool:
    """Whether a 400 body is new-api's "no such task" (at the top level or under error)."""
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    codes = [body.get("code"), error.get("code") if isinstance(error, dict) else None]
    return "task_not_exist" in codes


class Upstream:
    """Talks to the upstream; knows nothing about the database."""

    def __init__(
        self, base_url: str, api_key: SecretStr | None, client: httpx.AsyncClient, timeout: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.client = client
        self.timeout = timeout

    def headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    async def fetch(self, task_id: str) -> Fetch:
        """Read one task's status."""
        url = self.base_url + video_path(task_id)
        try:
            async with self.client.stream(
                "GET", url, headers=self.headers(), timeout=self.timeout
            ) as response:
                body = await _read_limited(response)
        except (httpx.TimeoutException, TimeoutError) as exc:
            return Fetch("timeout", detail=f"upstream timed out after {self.timeout:g}s: {exc}")
        except httpx.ConnectError as exc:
            return Fetch("unreachable", detail=f"upstream unreachable: {exc}")
        except TRANSPORT_ERRORS as exc:
            return Fetch("error", detail=f"upstream connection failed: {type(exc).__name__}: {exc}")
        except BodyTooLarge:
            return Fetch("error", detail="upstream answer too large")
        return classify(response.status_code, response.headers, body)

    async def create(self, content: bytes | AsyncIterator[bytes], content_type: str) -> Answer:
        """``POST /v1/videos`` with our key; a streamed body goes out as it comes.
        Raises what the transport raises (timeouts included), and BodyTooLarge."""
        headers = {**self.headers(), "Content-Type": content_type, "Accept": "application/json"}
        async with self.client.stream(
            "POST", self.base_url + "/v1/videos", content=content, headers=headers,
            timeout=self.timeout,
        ) as response:  # fmt: skip
            body = await _read_limited(response)
        kind = response.headers.get("content-type", "application/json")
        return Answer(response.status_code, kind, body)

    async def open_content(self, task_id: str, byte_range: str | None) -> httpx.Response:
        """A streaming ``GET /v1/videos/{task_id}/content``; the caller closes it."""
        headers = self.headers()
        if byte_range:
            headers["Range"] = byte_range
        request = self.client.build_request(
            "GET", self.base_url + video_path(task_id) + "/content", headers=headers,
            timeout=self.timeout,
        )  # fmt: skip
        return await self.client.send(request, stream=True)


@dataclass(frozen=True, slots=True)
class Answer:
    """The upstream's answer to a create, whole."""

    status_code: int
    content_type: str
    body: bytes


# What a peer that is down, slow or not speaking HTTP can raise through the httpx API
# over the aiohttp transport: httpx's own errors, aiohttp's that it passes on, and sockets'.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, aiohttp.ClientError, OSError)


class BodyTooLarge(Exception):
    """The upstream answer is larger than a status object can be."""


async def _read_limited(response: httpx.Response) -> bytes:
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def classify(status: int, headers: httpx.Headers, body: bytes) -> Fetch:
    """Turn a status code and body into an outcome."""
    parsed: Any = None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if status == 200:
        if isinstance(parsed, dict):
            return Fetch("ok", status, body, video=parsed)
        return Fetch("error", status, body, detail="upstream answered 200 without a JSON object")
    if status == 404 or (status == 400 and is_task_not_exist(parsed)):
        return Fetch("not_found", status, body, detail="upstream has no such task")
    if status == 429:
        after = retry.parse_retry_after(headers.get("retry-after"), time.time())
        return Fetch("rate_limited", status, body, retry_after=after, detail="upstream rate limit")
    if status in (401, 403):
        return Fetch("unauthorized", status, body, detail=f"upstream refused our key ({status})")
    return Fetch("error", status, body, detail=f"upstream answered {status}")
