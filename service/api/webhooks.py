"""The webhooks status-proxy sends, described in the OpenAPI document's ``webhooks``
section (OpenAPI 3.1), so that /docs shows receivers what arrives. Nothing is served
here: deliveries are made by service/delivery.py from events written by the poller."""

from typing import Any, Literal

from fastapi import FastAPI, Header
from pydantic import BaseModel, Field

SIGNATURE_HELP = (
    "Standard Webhooks: `v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` "
    "with the `whsec_` secret (several signatures separated by spaces during a rotation)."
)


class WebhookError(BaseModel):
    code: str = Field(examples=["content_policy_violation"])
    message: str = Field(examples=["the prompt was refused by the provider"])


class WebhookResult(BaseModel):
    """status-proxy's reading of ``data``, the same for every upstream family."""

    status: Literal["completed", "failed", "in_progress"]
    progress: int | None = Field(None, ge=0, le=100, description="percent, when known")
    video_url: str | None = Field(
        None, description="the link wherever the upstream put it, or null"
    )
    error: WebhookError | None = None


class WebhookEvent(BaseModel):
    """The body of every webhook: the same shape for each type."""

    id: str = Field(description="the event id; also the `webhook-id` header", examples=["evt_…"])
    type: str
    timestamp: str = Field(description="when the event was made, RFC 3339 UTC")
    registration_id: str = Field(examples=["reg_…"])
    task_id: str
    upstream: str = Field("default", description="the name of the upstream that knows the task")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="the registration's metadata, echoed"
    )
    result: WebhookResult
    data: dict[str, Any] = Field(
        description="the upstream's task object exactly as last seen (for a task status-proxy "
        "gave up, `status` is `failed` and `error.code` is `status_proxy_timeout`, "
        "`status_proxy_not_found` or `status_proxy_upstream_error`)"
    )


class Completed(WebhookEvent):
    type: Literal["video.completed"] = "video.completed"
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "evt_2f9d0c7e51b84a5f",
                    "type": "video.completed",
                    "timestamp": "2026-11-28T12:01:00Z",
                    "registration_id": "reg_8a41c3f0b2d94e17",
                    "task_id": "video_bbfbc1d2-ab22-44ca-b9dd-bc16983acac2",
                    "upstream": "default",
                    "metadata": {"order_id": "42"},
                    "result": {
                        "status": "completed",
                        "progress": 100,
                        "video_url": "https://cdn.example.com/v/bbfbc1d2.mp4",
                        "error": None,
                    },
                    "data": {
                        "id": "video_bbfbc1d2-ab22-44ca-b9dd-bc16983acac2",
                        "object": "video",
                        "status": "completed",
                        "progress": 100,
                        "video_url": "https://cdn.example.com/v/bbfbc1d2.mp4",
                    },
                }
            ]
        }
    }


class Failed(WebhookEvent):
    type: Literal["video.failed"] = "video.failed"


class Progress(WebhookEvent):
    type: Literal["video.progress"] = "video.progress"


DESCRIPTIONS = {
    "video.completed": "The task completed: `result.video_url` is the link (null when the "
    "upstream gave none).",
    "video.failed": "The task failed upstream, or status-proxy gave it up "
    "(`status_proxy_timeout`, `status_proxy_not_found`, `status_proxy_upstream_error`).",
    "video.progress": "Opt-in and best effort: the status or progress changed. Pending "
    "progress events coalesce to the latest; none follows the terminal event.",
}
ANSWER: dict[int | str, dict[str, Any]] = {
    "2XX": {"description": "accepted (a 2xx status line within the timeout)"},
    "410": {"description": "gone: no more retries, the registration becomes `failed`"},
    "default": {"description": "anything else, a timeout or a refused connection is retried"},
}


def install(app: FastAPI) -> None:
    """Describe each webhook type under ``webhooks`` in the app's OpenAPI document."""
    for name, model in (
        ("video.completed", Completed),
        ("video.failed", Failed),
        ("video.progress", Progress),
    ):
        _describe(app, name, model)


def _describe(app: FastAPI, name: str, model: type[WebhookEvent]) -> None:
    async def webhook(
        body: model,  # type: ignore[valid-type]
        webhook_id: str = Header(description="the event id; the same on every retry"),
        webhook_timestamp: int = Header(description="Unix seconds of this attempt"),
        webhook_signature: str = Header(description=SIGNATURE_HELP),
    ) -> None:
        """Sent to the registration's callback URL."""

    app.webhooks.post(
        name,
        summary=name,
        description=DESCRIPTIONS[name],
        responses=ANSWER,
        operation_id=f"webhook_{name.replace('.', '_')}",
    )(webhook)
