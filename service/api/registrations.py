"""Routes under /v1/registrations."""

from __future__ import annotations

import time
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import TypeAdapter, ValidationError

from service import callbacks, ids, registrations
from service.api import errors, shortcuts, targets
from service.api.deps import CallerDep
from service.api.errors import ApiError, responses
from service.db import UNAVAILABLE
from service.models import (
    AttemptPublic,
    Page,
    Redelivery,
    RegistrationCreate,
    RegistrationPublic,
    RegistrationState,
)
from service.runtime import Runtime

router = APIRouter(prefix="/v1/registrations", tags=["registrations"])

RegistrationId = Annotated[str, Path(max_length=64, description="A registration id, reg_…")]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1-100")]


def _after(prefix: str) -> Any:
    return Query(pattern=ids.pattern(prefix), description="The last id of the previous page")


RegistrationAfter = Annotated[str | None, _after("reg")]
AttemptAfter = Annotated[str | None, _after("att")]


_ALREADY: dict[int | str, dict[str, Any]] = {
    200: {"model": RegistrationPublic, "description": "Already registered: the same registration"}
}


def _known(registration_id: str) -> str:
    if not ids.looks_like("reg", registration_id):
        raise ApiError(404, "no such registration")
    return registration_id


HasId = TypeVar("HasId", RegistrationPublic, AttemptPublic)


def _page(items: list[HasId], has_more: bool) -> Page[HasId]:
    return Page(
        data=items,
        first_id=items[0].id if items else None,
        last_id=items[-1].id if items else None,
        has_more=has_more,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=_ALREADY | responses(400, 401, 409, 413, 415, 422, 503),
)
async def create_registration(
    body: RegistrationCreate, caller: CallerDep, response: Response
) -> RegistrationPublic:
    """Watch a task of an upstream (`upstream`, default `default`) and deliver its
    terminal event to the callback URL."""
    created = await register(caller.runtime, caller.owner, body)
    if not created.created:
        response.status_code = status.HTTP_200_OK
    return created.registration


async def register(runtime: Runtime, owner: str, body: RegistrationCreate) -> registrations.Created:
    """Register the task (or find the same registration) and wake the workers; an
    ApiError for every refusal."""
    upstream = targets.known(runtime, body.upstream)
    await vet_callback(body.callback_url, runtime.callback_guard)
    try:
        created = await registrations.create(
            runtime.db,
            owner,
            body,
            time.time(),
            runtime.upstream_configs[upstream.name].poll_interval_min,
            upstream.family,
        )
    except registrations.Conflict as exc:
        raise ApiError(409, str(exc), exc.param) from None
    except registrations.Foreign:
        # As for every /v1/videos route: another key's video does not exist for this one.
        raise ApiError(404, "you have no video with this id", "task_id") from None
    wake_workers(runtime, created)
    return created


_PUBLIC = TypeAdapter(RegistrationPublic)  # what FastAPI serialises the route's answer with


async def create_shortcut(call: shortcuts.Call) -> Response | None:
    """``POST /v1/registrations`` below FastAPI's routing (``shortcuts``), for a caller
    with a valid key and a body that passes validation: the route's answer, whatever it
    is. None, for the route to answer, to everything else."""
    if call.scope["query_string"]:  # the route takes none: 422, the route's to say
        return None
    data = await call.json()
    if not isinstance(data, dict):
        return None
    try:
        body = RegistrationCreate.model_validate(data)
    except ValidationError:
        return None  # the route words the 422
    # From here the route would do the same with the same body: its answers, given here,
    # spare a second write.
    try:
        created = await register(call.runtime, call.owner, body)
    except ApiError as exc:
        return errors.refused(exc)
    except UNAVAILABLE as exc:
        return errors.unavailable(exc)
    return Response(
        _PUBLIC.dump_json(created.registration),
        status_code=status.HTTP_201_CREATED if created.created else status.HTTP_200_OK,
        media_type="application/json",
    )


SHORTCUT = shortcuts.Shortcut("POST", router.prefix, create_shortcut)


async def vet_callback(url: str, guard: callbacks.Guard) -> None:
    """422 for a callback URL that may not be used (checked again at delivery time)."""
    try:
        await callbacks.check(url, guard)
    except callbacks.CallbackRejected as exc:
        raise ApiError(422, str(exc), "callback_url") from None


def wake_workers(runtime: Runtime, created: registrations.Created) -> None:
    """Have this process's workers look now: a new task to poll, events to send."""
    if created.created:
        runtime.kick_poller()
    if created.events:
        runtime.kick_delivery()


@router.get("", responses=responses(401, 422, 503))
async def list_registrations(
    caller: CallerDep,
    task_id: Annotated[str | None, Query(max_length=200)] = None,
    state: RegistrationState | None = None,
    limit: Limit = 20,
    after: RegistrationAfter = None,
    upstream: Annotated[
        str | None, Query(max_length=64, description="Only this upstream's")
    ] = None,
) -> Page[RegistrationPublic]:
    """The caller's registrations, newest first."""
    if upstream is not None:
        targets.known(caller.runtime, upstream)
    items, has_more = await registrations.page(
        caller.runtime.db, caller.owner, limit, after, task_id, state, upstream
    )
    return _page(items, has_more)


@router.get("/{registration_id}", responses=responses(401, 404, 422, 503))
async def get_registration(
    registration_id: RegistrationId, caller: CallerDep
) -> RegistrationPublic:
    """One registration, with the task's latest snapshot."""
    try:
        return await registrations.get(caller.runtime.db, caller.owner, _known(registration_id))
    except registrations.NotFound:
        raise ApiError(404, "no such registration") from None


@router.delete("/{registration_id}", responses=responses(401, 404, 409, 422, 503))
async def cancel_registration(
    registration_id: RegistrationId, caller: CallerDep
) -> RegistrationPublic:
    """Cancel; no webhook follows."""
    try:
        return await registrations.cancel(
            caller.runtime.db, caller.owner, _known(registration_id), time.time()
        )
    except registrations.NotFound:
        raise ApiError(404, "no such registration") from None
    except registrations.Conflict as exc:
        raise ApiError(409, str(exc)) from None


@router.get("/{registration_id}/deliveries", responses=responses(401, 404, 422, 503))
async def list_deliveries(
    registration_id: RegistrationId,
    caller: CallerDep,
    limit: Limit = 20,
    after: AttemptAfter = None,
) -> Page[AttemptPublic]:
    """Delivery attempts, oldest first."""
    try:
        items, has_more = await registrations.deliveries(
            caller.runtime.db, caller.owner, _known(registration_id), limit, after
        )
    except registrations.NotFound:
        raise ApiError(404, "no such registration") from None
    return _page(items, has_more)


@router.post(
    "/{registration_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses(401, 404, 409, 422, 503),
)
async def redeliver(registration_id: RegistrationId, caller: CallerDep) -> Redelivery:
    """Send the terminal event again, with the same webhook-id."""
    try:
        event_id = await registrations.redeliver(
            caller.runtime.db, caller.owner, _known(registration_id), time.time()
        )
    except registrations.NotFound:
        raise ApiError(404, "no such registration") from None
    except registrations.Conflict as exc:
        raise ApiError(409, str(exc)) from None
    caller.runtime.kick_delivery()
    return Redelivery(registration_id=registration_id, event_id=event_id)
