"""The upstream video API: what one request for a task's status comes back with."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import aiohttp
import httpx
from pydantic import SecretStr

from service import retry, sender, snapshot, status

if TYPE_CHECKING:
    from service.upstreams import Family

Outcome = Literal[
    "ok",
    "not_found",
    "forbidden",
    "lasting",
    "rate_limited",
    "unauthorized",
    "error",
    "timeout",
    "unreachable",
]
# ok: a video object of this task. not_found: "no such task" (for now). forbidden: a 403,
# this task's problem unless several tasks answer it in a row (the poller judges that).
# lasting: an error the upstream will answer again and again. rate_limited, unauthorized:
# the whole upstream's problem. error, timeout, unreachable: passing; back off this task
# ("unreachable": no connection at all: a name that does not resolve, refused,
# unroutable; "timeout": waited past the timeout; "error": an answer that is no status
# object, or a connection that broke).

# Codes new-api answers for errors that will not go away by asking again: a platform
# without a converter, a channel that is gone, a task it cannot convert.
LASTING_CODES = frozenset(
    {"not_implemented", "invalid_channel_id", "convert_to_openai_video_failed"}
)

MAX_BODY = 1024 * 1024  # a status object is small; refuse to hold more
CHUNK = 16 * 1024  # bytes of a compressed body handed to a decoder at a time


@dataclass(frozen=True, slots=True)
class Fetch:
    """One answer to ``GET /v1/videos/{task_id}``, classified.

    ``video`` is the task's object (unwrapped) and ``text`` its clean UTF-8 JSON text,
    the snapshot to keep; ``code`` and ``message`` are the upstream's own words for an
    error, when it gave them."""

    outcome: Outcome
    status_code: int | None = None
    body: bytes = b""
    video: dict[str, Any] | None = None
    retry_after: float | None = None
    detail: str = ""
    text: str = ""
    code: str = ""
    message: str = ""


def video_path(task_id: str) -> str:
    """The upstream path of a task; the id is one encoded segment and cannot change the path."""
    return "/v1/videos/" + quote(task_id, safe="")


class Upstream:
    """Talks to one named upstream, in its family's words; knows nothing about the database.

    Status reads follow the family (its path, its required headers, its reading of the
    answer); create, remix, delete and content are OpenAI's video routes, which only a
    family with ``openai_routes`` takes."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        client: httpx.AsyncClient,
        timeout: float,
        family: Family | None = None,
        name: str = "default",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.client = client
        self.timeout = timeout
        self.family = family if family is not None else _openai_video()
        self.name = name

    def headers(self) -> dict[str, str]:
        """The family's required headers, then ours (nothing overrides the key)."""
        found = dict(self.family.headers())
        if self._api_key is not None:
            found["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return found

    def secret(self) -> str | None:
        """The key, for masking in stored errors and logs; never sent anywhere else."""
        return None if self._api_key is None else self._api_key.get_secret_value()

    async def fetch(self, task_id: str) -> Fetch:
        """Read one task's status."""
        url = self.base_url + self.family.status_path(task_id)
        # Below the client layer: a GET to a URL known in full needs none of its URL
        # merging, cookies, auth flow or redirects, nor httpx's request and response
        # models (issue 21: a third, then an eighth, of a poll's CPU).
        outgoing = sender.Sender.of(self.client)
        try:
            reply = await outgoing.send(
                "GET", url, headers=self.headers().items(), timeout=self.timeout
            )
            try:
                body = await _read_reply(reply)
            finally:
                await reply.close()
        except (httpx.TimeoutException, TimeoutError) as exc:
            return Fetch("timeout", detail=f"upstream timed out after {self.timeout:g}s: {exc}")
        except httpx.ConnectError as exc:
            return Fetch("unreachable", detail=f"upstream unreachable: {exc}")
        except TRANSPORT_ERRORS as exc:
            return Fetch("error", detail=f"upstream connection failed: {type(exc).__name__}: {exc}")
        except BodyTooLarge:
            return Fetch("error", detail="upstream answer too large")
        return self.family.classify(reply.status, reply.headers, body, task_id)

    async def create(
        self,
        content: bytes | AsyncIterator[bytes],
        content_type: str,
        length: int,
        path: str = "/v1/videos",
    ) -> Answer:
        """``POST`` a create (``/v1/videos``, or a remix path) with our key and a
        ``Content-Length`` (never chunked: many servers and proxies cannot read that).
        Raises what the transport raises (timeouts included), and BodyTooLarge."""
        headers = {
            **self.headers(), "Content-Type": content_type, "Content-Length": str(length),
            "Accept": "application/json",
        }  # fmt: skip
        async with self.client.stream(
            "POST", self.base_url + path, content=content, headers=headers, timeout=self.timeout
        ) as response:
            body = await _read_limited(response)
        kind = response.headers.get("content-type", "application/json")
        return Answer(response.status_code, kind, body)

    async def delete(self, task_id: str) -> Answer:
        """``DELETE /v1/videos/{task_id}`` with our key; raises what the transport raises."""
        url = self.base_url + video_path(task_id)
        async with self.client.stream(
            "DELETE", url, headers=self.headers(), timeout=self.timeout
        ) as response:
            body = await _read_limited(response)
        kind = response.headers.get("content-type", "application/json")
        return Answer(response.status_code, kind, body)

    async def open_content(
        self, task_id: str, byte_range: str | None, variant: str | None = None
    ) -> httpx.Response:
        """A streaming ``GET /v1/videos/{task_id}/content``; the caller closes it."""
        headers = self.headers()
        if byte_range:
            headers["Range"] = byte_range
        params = {"variant": variant} if variant else None
        request = self.client.build_request(
            "GET", self.base_url + video_path(task_id) + "/content", headers=headers,
            params=params, timeout=self.timeout,
        )  # fmt: skip
        return await self.client.send(request, stream=True)


def _openai_video() -> Family:
    # Imported here: the families build on this module's Fetch.
    from service.upstreams import openai_video

    return openai_video.FAMILY


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


async def _read_reply(reply: sender.Reply) -> bytes:
    """The body of ``reply``, decoded as its ``Content-Encoding`` says (by httpx's
    decoders, as a response's ``aiter_bytes`` decodes); BodyTooLarge past MAX_BODY."""
    if "content-encoding" in reply.headers:
        coded = [("content-encoding", name) for name in reply.headers.getall("content-encoding")]
        return await _read_limited(httpx.Response(reply.status, headers=coded, stream=_Raw(reply)))
    return await _limited(_Raw(reply))


class _Raw(httpx.AsyncByteStream):
    """The body of a reply as it was sent, for httpx to decode."""

    def __init__(self, reply: sender.Reply) -> None:
        self.reply = reply

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.reply.read(CHUNK):
            yield chunk


async def _read_limited(response: httpx.Response) -> bytes:
    return await _limited(response.aiter_bytes())


async def _limited(stream: AsyncIterable[bytes]) -> bytes:
    """The whole of ``stream``; BodyTooLarge past MAX_BODY."""
    chunks = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def error_words(body: Any) -> tuple[str, str]:
    """The ``code`` and ``message`` of an error answer, at the top level (new-api's own
    errors) or under ``error`` (OpenAI's shape); empty when there are none."""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    inner = error if isinstance(error, dict) else {}
    top = body.get("code")
    code = top if isinstance(top, str) and top else inner.get("code")
    message = body.get("message") if isinstance(body.get("message"), str) else None
    if message is None:
        message = inner.get("message") if isinstance(inner.get("message"), str) else error
    return _short(code), _short(message)


def _short(value: Any) -> str:
    return value[:500] if isinstance(value, str) else ""


def task_object(body: Any, task_id: str) -> dict[str, Any] | None:
    """The body, when it is a provider's task object of this task (``status.is_task_of``)."""
    return body if status.is_task_of(body, task_id) else None


@dataclass(frozen=True, slots=True)
class Rules:
    """What differs between providers' answers to a status request; ``classify_with``
    does the rest the same way for all (the size limit, lenient JSON, 401, 403, 429
    with ``Retry-After``, 5xx).

    ``task`` gives the task object of this task inside a 200 body (unwrapped), or None
    when the body is something else (by default: the body itself when it is an object
    with a status and, if it has an ``id``, this task's); ``words`` the ``code`` and
    ``message`` of an error body; ``not_found`` and ``lasting`` say, from the status
    and that code, that the task does not exist (for now) or that the error will be
    answered again and again; ``wait`` reads a 429 body's own hint, in seconds, when
    there is no ``Retry-After``."""

    task: Callable[[Any, str], dict[str, Any] | None] = task_object
    words: Callable[[Any], tuple[str, str]] = error_words
    not_found: Callable[[int, str], bool] = lambda status_code, code: status_code == 404
    lasting: Callable[[int, str], bool] = lambda status_code, code: False
    wait: Callable[[Any], float | None] = lambda body: None


def gateway_not_found(status_code: int, code: str) -> bool:
    """new-api's "no such task": 400 ``task_not_exist`` (404 from proxies and forks)."""
    return status_code == 404 or (status_code == 400 and code == "task_not_exist")


def gateway_lasting(status_code: int, code: str) -> bool:
    """new-api's errors that asking again will not change (LASTING_CODES, any 501)."""
    return status_code == 501 or code in LASTING_CODES


def _video_of(body: Any, task_id: str) -> dict[str, Any] | None:
    video = status.unwrap(body)
    return video if status.is_video_of(video, task_id) else None


# OpenAI's video routes as new-api gateways answer them (UPSTREAM.md, "Errors on GET").
OPENAI_VIDEO = Rules(task=_video_of, not_found=gateway_not_found, lasting=gateway_lasting)


def classify(status_code: int, headers: Mapping[str, str], body: bytes, task_id: str) -> Fetch:
    """Turn a status code and body into an outcome (UPSTREAM.md, "Errors on GET")."""
    return classify_with(OPENAI_VIDEO, status_code, headers, body, task_id)


def classify_with(
    rules: Rules, status_code: int, headers: Mapping[str, str], body: bytes, task_id: str
) -> Fetch:
    """Turn a status code and body into an outcome, by a provider's ``rules``."""
    if len(body) > MAX_BODY:
        return Fetch("error", status_code, detail="upstream answer too large")
    parsed = snapshot.parse(body)
    value = parsed.value if parsed is not None else None
    if status_code == 200:
        return _classify_200(rules, body, parsed, task_id)
    code, message = rules.words(value)
    if rules.not_found(status_code, code):
        return Fetch("not_found", status_code, body, detail="upstream has no such task")
    if status_code == 429:
        after = retry.parse_retry_after(headers.get("retry-after"), time.time())
        if after is None:
            after = rules.wait(value)
        detail = "upstream rate limit"
        return Fetch("rate_limited", status_code, body, retry_after=after, detail=detail)
    if status_code == 401:
        return Fetch("unauthorized", status_code, body, detail="upstream refused our key (401)")
    words = f" {code}" if code else ""
    if status_code == 403:
        detail = f"upstream answered 403{words} for this task"
        return Fetch("forbidden", status_code, body, detail=detail, code=code, message=message)
    outcome: Outcome = "lasting" if rules.lasting(status_code, code) else "error"
    detail = f"upstream answered {status_code}{words}"
    return Fetch(outcome, status_code, body, detail=detail, code=code, message=message)


def _classify_200(rules: Rules, body: bytes, parsed: snapshot.Parsed | None, task_id: str) -> Fetch:
    """A 200 is a task only when it is an object of this task; anything else (an error
    envelope, an HTML page, [] or null) is a passing upstream error, like a 5xx."""
    value = parsed.value if parsed is not None else None
    task = rules.task(value, task_id) if parsed is not None else None
    if parsed is None or task is None:
        code, message = rules.words(value)
        detail = "upstream answered 200 without a video object of this task"
        return Fetch("error", 200, body, detail=detail, code=code, message=message)
    text = parsed.text if task is value else snapshot.dumps(task)
    return Fetch("ok", 200, body, video=task, text=text)
