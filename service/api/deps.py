"""Dependencies shared by the routes: the runtime and the caller's key.

They are all ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool,
a thread hop per dependency per request, for work that takes microseconds."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.runtime import Runtime, key_digest

_bearer = HTTPBearer(auto_error=False, description="One of STATUS_PROXY_API_KEYS")


def _query_names(dependant: Dependant) -> list[str]:
    names = [param.alias for param in dependant.query_params]
    for sub in dependant.dependencies:
        names += _query_names(sub)
    return names


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_owner(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's identity: the hash of its key ("" when the API is open)."""
    digests: list[bytes] = runtime.key_digests
    if not digests:
        return ""
    if credentials is None:
        raise ApiError(401, "an API key is required: Authorization: Bearer <key>")
    given = key_digest(credentials.credentials)
    found = False
    for digest in digests:  # every key is compared, so timing tells nothing
        found |= hmac.compare_digest(given, digest)
    if not found:
        raise ApiError(401, "the API key is not valid")
    return given.hex()


OwnerDep = Annotated[str, Depends(get_owner)]


async def known_query(request: Request, _owner: OwnerDep) -> None:
    """Refuse query parameters the route does not take, as bodies refuse unknown fields
    (after the key is checked: strangers learn nothing about the routes)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = set(_query_names(dependant))
    for name in request.query_params:
        if name not in known:
            raise ApiError(422, f"unknown query parameter {name!r}", name or None)


async def json_content(request: Request, _owner: OwnerDep) -> None:
    """Bodies are JSON: say so, rather than fail to parse something else."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, "the body must be JSON, sent as Content-Type: application/json")
