"""The contract's error envelope, for every error the API answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.db import UNAVAILABLE
from service.models import ErrorBody
from service.upstream import TRANSPORT_ERRORS, Answer, BodyTooLarge, Fetch

log = logging.getLogger(__name__)

CODES = {
    400: "invalid_json",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "invalid_request",
    502: "upstream_error",
    503: "not_ready",
    504: "upstream_timeout",
}


class ApiError(Exception):
    """An error answer with the contract's envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or CODES.get(status, "error")
        self.headers = headers or {}


def upstream_failure(exc: BaseException) -> ApiError | None:
    """The answer for an upstream request that failed on the way, or None for any other
    exception: 504 for a timeout, 502 ``upstream_unreachable`` when no connection could
    be made (no such name, refused), 502 for a connection that broke. The message is
    the transport's account (service/transport.py), which names no header."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ApiError(504, f"the upstream did not answer in time: {exc or 'timed out'}")
    if isinstance(exc, httpx.ConnectError):
        return ApiError(502, f"the upstream is unreachable: {exc}", code="upstream_unreachable")
    if isinstance(exc, TRANSPORT_ERRORS):
        return ApiError(502, f"the upstream connection failed: {type(exc).__name__}: {exc}")
    return None


async def forwarded(request: Awaitable[Answer], upstream: str = "default") -> Answer:
    """The upstream's answer to a forwarded request, as the client gets it: a 401 is our
    upstream key refused (502, saying so), an answer too large or a failed request is the
    matching 502 or 504; any other answer passes through."""
    try:
        answer = await request
    except BodyTooLarge:
        raise ApiError(502, "the upstream's answer is too large") from None
    except Exception as exc:
        failure = upstream_failure(exc)
        if failure is None:
            raise
        raise failure from None
    if answer.status_code == 401:  # our upstream key, not the client's: say whose
        raise upstream_refused_key(401, upstream)
    return answer


def upstream_refused_key(status: int, upstream: str = "default") -> ApiError:
    """The upstream refused status-proxy's own upstream key: a 502 that says so, so that a
    client never takes it for its own key being refused (that is our 401), and names the
    setting the operator must check."""
    setting = (
        "STATUS_PROXY_UPSTREAM_API_KEY"
        if upstream == "default"
        else f"the api_key of upstream {upstream!r} in STATUS_PROXY_UPSTREAMS"
    )
    return ApiError(
        502,
        f"the upstream refused status-proxy's upstream key (HTTP {status}); the client's "
        f"key was accepted: the operator must check {setting}",
        code="upstream_key_refused",
    )


def fetch_failure(fetch: Fetch, upstream: str = "default") -> ApiError:
    """The answer for a fetch-through that got no video object."""
    if fetch.outcome in ("not_found", "forbidden"):  # a 403 hides one task from our key
        return ApiError(404, "the upstream has no such task", "task_id")
    if fetch.outcome == "timeout":
        return ApiError(504, f"the upstream did not answer in time: {fetch.detail}")
    if fetch.outcome == "unreachable":
        return ApiError(502, f"the {fetch.detail}", code="upstream_unreachable")
    if fetch.outcome == "unauthorized" and fetch.status_code == 401:
        return upstream_refused_key(401, upstream)
    return ApiError(502, fetch.detail or "the upstream failed")


def envelope(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    body = {
        "error": {"code": code or CODES.get(status, "error"), "message": message, "param": param}
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


# Routes that forward to the upstream pass its errors through, status and body as it gave
# them: any 4xx or 5xx may be the upstream's object rather than status-proxy's envelope.
PASSED_THROUGH: dict[int | str, dict[str, Any]] = {
    kind: {
        "description": "status-proxy's error, or the upstream's own, status and body as given",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    for kind in ("4XX", "5XX")
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error answers a route can give."""
    return {status: {"model": ErrorBody, "description": CODES[status]} for status in statuses}


def _param(loc: tuple[Any, ...]) -> str | None:
    if len(loc) >= 2 and loc[0] in ("body", "query", "path", "header") and isinstance(loc[1], str):
        return loc[1]
    return None


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error.get("loc", ())[1:])
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message


async def _before_routing(request: Request) -> JSONResponse | None:
    """FastAPI reads a body before the route's dependencies, the key check among them:
    answer a caller without a valid key 401 first, as every /v1 route does."""
    from service.api import deps  # deps raises this module's ApiError: imported late

    refused = await deps.refusal(request)
    return None if refused is None else envelope(refused.status, refused.message)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if (refused := await _before_routing(request)) is not None:
        return refused
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return envelope(400, "the body is not valid JSON")
    if not errors:
        return envelope(422, "invalid request")
    first = errors[0]
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return envelope(422, "a JSON body is required")
    return envelope(422, _describe(first), _param(tuple(first.get("loc", ()))))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    # A method the path does not take, or a body not read: the key is checked first.
    if exc.status_code in (400, 405) and (refused := await _before_routing(request)):
        return refused
    if exc.status_code == 400:
        message = "the body could not be read as UTF-8 JSON"
    response = envelope(exc.status_code, message)
    response.headers.update(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed(request)):
        response.headers["Allow"] = allowed
    return response


def _allowed(request: Request) -> str:
    """Every method the path answers, from the OpenAPI schema (routing names only one)."""
    wanted = request.url.path.split("/")
    for template, operations in request.app.openapi()["paths"].items():
        parts = template.split("/")
        if len(parts) == len(wanted) and all(
            part == given or (part.startswith("{") and given)
            for part, given in zip(parts, wanted, strict=True)
        ):
            return ", ".join(sorted(method.upper() for method in operations))
    return ""


async def _api(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return refused(exc)


def refused(exc: ApiError) -> JSONResponse:
    """The answer to an ApiError, as every route gives it."""
    response = envelope(exc.status, exc.message, exc.param, exc.code)
    response.headers.update(exc.headers)
    return response


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    return unavailable(exc)


def unavailable(exc: BaseException) -> JSONResponse:
    """The 503 for a database that cannot be used now, as every route gives it."""
    # The type only: driver messages can carry statement parameters.
    log.warning("database unavailable: %s", type(exc).__name__)
    response = envelope(503, "the database is unavailable; try again shortly")
    response.headers["Retry-After"] = "1"
    return response


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return envelope(500, "internal error", code="internal_error")


def install(app: FastAPI) -> None:
    """Route every error through the envelope."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(ApiError, _api)
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
