"""Routes under /v1/webhook_secret: the calling key's signing secret, and its rotation.

These are the only answers that ever carry a secret, and only the caller's own."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Response

from service import signing, webhook_secrets
from service.api.deps import Caller, CallerDep
from service.api.errors import ApiError, responses
from service.models import SecretRotation, WebhookSecretPublic

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/webhook_secret", tags=["signing secrets"])

NO_STORE = "no-store"  # no cache or proxy on the way keeps a copy of a secret
OPEN_API = (
    "the API is open (STATUS_PROXY_API_KEYS is not set): webhooks are signed with "
    "STATUS_PROXY_WEBHOOK_SECRET, which the operator reads with `status-proxy secret`"
)


def _owner(caller: Caller) -> str:
    # The open API's secret also signs operator events: it is never handed to whoever
    # can reach an open API.
    if not caller.owner:
        raise ApiError(409, OPEN_API)
    return caller.owner


@router.get("", responses=responses(401, 409, 415, 422, 503))
async def get_webhook_secret(caller: CallerDep, response: Response) -> WebhookSecretPublic:
    """The calling key's signing secret (created on first need), and until when the
    previous one also signs while a rotation's grace period lasts."""
    now = time.time()
    try:
        found = await webhook_secrets.current(caller.runtime.db, _owner(caller), now)
    except signing.MalformedSecret as exc:
        log.error("%s", exc)
        raise ApiError(409, str(exc), code="malformed_secret") from None
    response.headers["Cache-Control"] = NO_STORE
    return found.public(now)


@router.post("/rotate", responses=responses(400, 401, 409, 413, 415, 422, 503))
async def rotate_webhook_secret(
    caller: CallerDep, response: Response, body: SecretRotation | None = None
) -> WebhookSecretPublic:
    """A new signing secret for the calling key. Until ``grace_period`` seconds have
    passed, every webhook of the key carries two signatures, the new one first."""
    rotation = body or SecretRotation()
    now = time.time()
    rotated = await webhook_secrets.rotate(
        caller.runtime.db, _owner(caller), rotation.grace_period, now
    )
    if rotated.previous_expires_at is None:
        log.info("webhook secret rotated; the previous one no longer signs")
    else:
        log.info(
            "webhook secret rotated; the previous one signs for %d s more", rotation.grace_period
        )
    response.headers["Cache-Control"] = NO_STORE
    return rotated.public(now)
