"""The contract's error envelope, for every error the API answers."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.db import UNAVAILABLE
from service.models import ErrorBody
from service.upstream import TRANSPORT_ERRORS

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
    """The answer for an upstream request that failed on the way (504 for a timeout,
    502 for anything else the transport raises, saying what happened), or None for any
    other exception."""
    # The httpx layer over aiohttp renames its errors (a connection the server closed
    # arrives as ConnectTimeout); the aiohttp error underneath says what happened.
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
    if isinstance(cause, httpx.TimeoutException | TimeoutError):
        return ApiError(504, "the upstream did not answer in time")
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return ApiError(502, "the upstream closed the connection without answering")
    if isinstance(cause, aiohttp.ClientConnectorError):
        return ApiError(502, f"could not connect to the upstream: {cause.strerror or 'refused'}")
    if isinstance(cause, aiohttp.ClientPayloadError):
        return ApiError(502, "the upstream's answer was cut short")
    if isinstance(cause, aiohttp.ClientOSError):
        return ApiError(502, f"the connection to the upstream broke: {cause.strerror or cause}")
    if isinstance(cause, TRANSPORT_ERRORS):
        return ApiError(502, f"the upstream request failed: {type(cause).__name__}")
    return None


def envelope(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    body = {
        "error": {"code": code or CODES.get(status, "error"), "message": message, "param": param}
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


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


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
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
    response = envelope(exc.status, exc.message, exc.param, exc.code)
    response.headers.update(exc.headers)
    return response


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
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
