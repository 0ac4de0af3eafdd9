"""Routes for receivers: a test send before real traffic, and bulk recovery after an outage."""

from __future__ import annotations

import time

from fastapi import APIRouter, status

from service import delivery, ids, recovery, webhook_secrets
from service.api.deps import Caller, CallerDep
from service.api.errors import ApiError, responses
from service.api.registrations import vet_callback
from service.models import Recover, Recovered, WebhookTest, WebhookTestResult, compact_json

router = APIRouter(tags=["receivers"])

TEST_EVENT = "webhook.test"


async def signing_secrets(caller: Caller) -> tuple[str, ...]:
    """What signs the caller's webhooks now, newest first: its key's own secrets, or the
    open API's secret."""
    runtime = caller.runtime
    async with runtime.db.write() as conn:  # a key's first secret is made on first need
        found = await webhook_secrets.for_owners(conn, [caller.owner], runtime.secret, time.time())
    return found[caller.owner]


def test_body(event_id: str, now: float) -> bytes:
    """A Standard Webhooks ``webhook.test`` event: ``{"id","type","timestamp","data"}``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    data = {"message": "a test event from status-proxy; no task is behind it"}
    event = {"id": event_id, "type": TEST_EVENT, "timestamp": stamp, "data": data}
    return compact_json(event).encode()


@router.post("/v1/webhook_test", responses=responses(400, 401, 413, 415, 422, 503))
async def webhook_test(body: WebhookTest, caller: CallerDep) -> WebhookTestResult:
    """Send one signed ``webhook.test`` event to a URL now, under the callback rules, and
    answer what the receiver did (``status_code`` null when it did not answer)."""
    settings = caller.runtime.settings
    await vet_callback(body.callback_url, caller.runtime.callback_guard)
    event_id = ids.new_id("evt")
    answer = await delivery.send(
        caller.runtime.delivery_client,
        body.callback_url,
        event_id,
        test_body(event_id, time.time()),
        await signing_secrets(caller),
        settings.delivery_timeout,
        headers=body.headers,
        guard=caller.runtime.callback_guard,
    )
    return WebhookTestResult(
        event_id=event_id,
        status_code=answer.status_code,
        error=answer.error,
        duration_ms=answer.duration_ms,
    )


@router.post(
    "/v1/deliveries/recover",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses(400, 401, 413, 415, 422, 503),
)
async def recover(body: Recover, caller: CallerDep) -> Recovered:
    """Send again the terminal event of each of the caller's ``failed`` registrations
    whose delivery died between ``since`` and ``until`` (unix seconds; ``until`` defaults
    to now): same ``webhook-id``, a fresh retry schedule. Registrations failed by a
    ``410 Gone`` are left alone."""
    if body.until is not None and body.until < body.since:
        raise ApiError(422, "until must not be before since", "until")
    now = time.time()
    until = now if body.until is None else body.until
    count = await recovery.recover(caller.runtime.db, caller.owner, body.since, until, now)
    if count:
        caller.runtime.kick_delivery()
    return Recovered(recovered=count)
