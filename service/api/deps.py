"""Dependencies shared by the routes: the runtime and the caller's key.

They are all ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool,
a thread hop per dependency per request, for work that takes microseconds."""

from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.runtime import Runtime, key_digest

_bearer = HTTPBearer(auto_error=False, description="One of STATUS_PROXY_API_KEYS")


@dataclass(slots=True, frozen=True)
class Caller:
    """Who is calling, and the runtime to serve them with."""

    runtime: Runtime
    owner: str  # the hash of the caller's key ("" when the API is open)


class _RouteRules:
    """What a route accepts beyond its declared parameters, worked out once per route."""

    def __init__(self, route: APIRoute) -> None:
        self.query_names = frozenset(_query_names(route.dependant))
        self.takes_json = route.body_field is not None
        # A route whose body is optional takes an empty request too, without a type.
        self.body_optional = (
            route.body_field is not None and not route.body_field.field_info.is_required()
        )


def _query_names(dependant: Dependant) -> list[str]:
    names = [param.alias for param in dependant.query_params]
    for sub in dependant.dependencies:
        names += _query_names(sub)
    return names


def _rules(route: Any) -> _RouteRules | None:
    if not isinstance(route, APIRoute):
        return None
    rules: _RouteRules | None = route.__dict__.get("_status_proxy_rules")
    if rules is None:
        rules = route.__dict__["_status_proxy_rules"] = _RouteRules(route)
    return rules


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Every /v1 route's one dependency, so a request pays for one, not four: checks the
    key first (strangers learn nothing about the routes), then refuses query parameters
    the route does not take, as bodies refuse unknown fields, and bodies that are not
    JSON on routes that take one."""
    runtime: Runtime = request.app.state.runtime
    owner = _authenticate(runtime, credentials)
    rules = _rules(request.scope.get("route"))
    if rules is not None:
        query = request.query_params
        for name in query:
            if name not in rules.query_names:
                raise ApiError(422, f"unknown query parameter {name!r}", name or None)
        if len(query.multi_items()) > len(query):  # which one would count is a guess
            name = next(name for name in query if len(query.getlist(name)) > 1)
            raise ApiError(422, f"query parameter {name!r} is given more than once", name)
        if rules.takes_json and not (rules.body_optional and _empty(request)):
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json" and not media.endswith("+json"):
                raise ApiError(415, "the body must be JSON, sent as Content-Type: application/json")
            body = await request.body()  # read already, by FastAPI
            try:
                if body:  # an empty one is the body's validation's to refuse (422)
                    loads_once(body)
            except ValueError:  # what FastAPI's parser takes and JSON does not
                raise ApiError(400, "the body is not valid JSON") from None
    return Caller(runtime, owner)


class _Twice(ValueError):
    """A JSON object names one member twice."""


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) < len(names):
        raise _Twice(next(name for name in names if names.count(name) > 1))
    return dict(pairs)


def _not_json(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"the number {text[:20]} is too large")
    return number


def loads_once(body: bytes) -> Any:
    """A JSON body, parsed (``loads_text``), which must be UTF-8 (RFC 8259 section 8.1;
    Python's parser would also take UTF-16 and UTF-32). Raises what ``loads_text``
    raises."""
    return loads_text(body.decode("utf-8"))


def loads_text(text: str) -> Any:
    """JSON text, parsed; 422 when one of its objects names a member twice (parsers keep
    the last, so which one counts would be a guess: RFC 8259 section 4 leaves it
    undefined). Raises ValueError for text that is not JSON as RFC 8259 defines it,
    including ``NaN`` and ``Infinity`` (section 6) and a number too large for a double,
    which would otherwise be stored as null."""
    try:
        return json.loads(
            text, object_pairs_hook=_once_each, parse_constant=_not_json, parse_float=_finite
        )
    except _Twice as twice:
        name = str(twice)[:64]
        raise ApiError(422, f"{name!r} is given more than once in the body", name) from None


CallerDep = Annotated[Caller, Depends(get_caller)]


def _empty(request: Request) -> bool:
    """Whether the request announces no body at all."""
    headers = request.headers
    return "transfer-encoding" not in headers and headers.get("content-length", "0") == "0"


async def refusal(request: Request) -> ApiError | None:
    """The 401 for a /v1 request without a valid key, or None. For answers made before
    the route's dependencies run (a body FastAPI could not decode): the key comes first,
    so a stranger never learns how its body was read."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not request.url.path.startswith("/v1/"):
        return None
    try:
        _authenticate(runtime, await _bearer(request))
    except ApiError as exc:
        return exc
    return None


def _authenticate(runtime: Runtime, credentials: HTTPAuthorizationCredentials | None) -> str:
    digests: list[bytes] = runtime.key_digests
    if not digests:
        return ""
    if credentials is None:
        raise ApiError(401, "an API key is required: Authorization: Bearer <key>")
    owner = key_owner(digests, credentials.credentials)
    if owner is None:
        raise ApiError(401, "the API key is not valid")
    return owner


def key_owner(digests: list[bytes], key: str) -> str | None:
    """The owner a key stands for (the hex of its digest), or None when it is none of
    the configured keys."""
    given = key_digest(key)
    found = False
    for digest in digests:  # every key is compared, so timing tells nothing
        found |= hmac.compare_digest(given, digest)
    return given.hex() if found else None
