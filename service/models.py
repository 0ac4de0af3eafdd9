"""Database tables and the API's request and response schemas."""

from __future__ import annotations

import json
import re
from typing import Any, Generic, Literal, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Column, SQLModel
from sqlmodel import Field as Col

from service import headers

EventType = Literal["video.completed", "video.failed", "video.progress"]
TERMINAL_EVENTS: tuple[EventType, ...] = ("video.completed", "video.failed")
EVENT_ORDER: tuple[EventType, ...] = ("video.completed", "video.failed", "video.progress")
RegistrationState = Literal["active", "delivered", "failed", "ended", "cancelled"]

# A letter or digit, then A-Z a-z 0-9 _ - . : with no "..": each dot is followed by
# another character or ends the id. Plain enough for the OpenAPI schema (no lookaround).
TASK_ID_REGEX = r"^[A-Za-z0-9](?:[A-Za-z0-9_:-]|\.[A-Za-z0-9_:-])*\.?$"
TASK_ID_PATTERN = re.compile(TASK_ID_REGEX)
TASK_ID_LIMIT = 200
DEFAULT_UPSTREAM = "default"
UPSTREAM_REGEX = r"^[a-z0-9-]{1,32}$"
METADATA_LIMIT = 4096
CALLBACK_URL_LIMIT = 2048


# --- tables -------------------------------------------------------------------------------


class Task(SQLModel, table=True):
    """One upstream task, polled once however many registrations it has."""

    __tablename__ = "tasks"
    __table_args__ = (
        # Each upstream's poller leases its own due tasks.
        sa.Index("ix_tasks_due", "upstream", "state", "next_poll_at"),
        sa.Index("ix_tasks_watch_started", "state", "watch_started_at"),
        sa.Index("ix_tasks_ended", "state", "ended_at"),
    )

    # A task is its upstream (a configured name) plus the id that upstream gave it.
    upstream: str = Col(primary_key=True, max_length=32)
    task_id: str = Col(primary_key=True, max_length=200)
    # watching: polled; idle: nobody needs it; ended: upstream terminal; given_up: by us
    state: str = Col(max_length=16)
    outcome: str | None = Col(default=None, max_length=16)  # completed | failed once terminal
    raw_status: str | None = Col(default=None, max_length=64)
    progress: int | None = None
    snapshot: str | None = Col(default=None, sa_column=Column(sa.Text, nullable=True))
    snapshot_at: float | None = None
    created_at: float
    watch_started_at: float
    next_poll_at: float
    interval: float
    polled_at: float | None = None
    lease_until: float | None = None
    not_found_since: float | None = None
    errors: int = 0
    empty_completions: int = 0
    ended_at: float | None = None


class Registration(SQLModel, table=True):
    """A client's wish to hear about one task at one callback URL."""

    __tablename__ = "registrations"
    __table_args__ = (
        sa.Index("ix_registrations_owner", "owner", "id"),
        sa.Index("ix_registrations_task", "task_id", "upstream", "state"),
        sa.Index("ix_registrations_updated", "state", "updated_at"),
        sa.Index(
            "ux_registrations_active",
            "dedupe_key",
            unique=True,
            sqlite_where=sa.text("state = 'active'"),
            postgresql_where=sa.text("state = 'active'"),
        ),
    )

    id: str = Col(primary_key=True, max_length=40)
    owner: str = Col(max_length=64)
    # Rows from before there were several upstreams are the default's (migration 0010).
    upstream: str = Col(max_length=32, sa_column_kwargs={"server_default": "default"})
    task_id: str = Col(max_length=200)
    callback_url: str = Col(sa_column=Column(sa.Text, nullable=False))
    events: list[str] = Col(sa_column=Column(sa.JSON, nullable=False))
    meta: dict[str, Any] = Col(sa_column=Column("metadata", sa.JSON, nullable=False))
    # Custom headers sent with each webhook; secret to the owning key, never logged.
    headers: dict[str, str] = Col(
        default_factory=dict, sa_column=Column(sa.JSON, nullable=False, server_default="{}")
    )
    state: str = Col(max_length=16)
    dedupe_key: str = Col(max_length=64)
    created_at: float
    updated_at: float


class Event(SQLModel, table=True):
    """The outbox: one webhook to send, written with the state change that caused it."""

    __tablename__ = "events"
    __table_args__ = (
        sa.Index("ix_events_due", "state", "lane", "next_attempt_at"),
        sa.Index("ix_events_registration", "registration_id", "seq"),
    )

    seq: int | None = Col(default=None, primary_key=True)
    id: str = Col(unique=True, max_length=40)
    registration_id: str = Col(foreign_key="registrations.id", max_length=40)
    type: str = Col(max_length=32)
    body: str = Col(sa_column=Column(sa.Text, nullable=False))
    # pending | delivered | dead | dropped
    state: str = Col(max_length=16)
    attempts: int = 0
    lane: int = 0  # 0: never tried, 1: retry; first attempts go ahead of retries
    next_attempt_at: float
    lease_until: float | None = None
    created_at: float
    # When it was first sent (the retry window runs from here); None until then.
    first_attempt_at: float | None = None


class Attempt(SQLModel, table=True):
    """One try at sending one event."""

    __tablename__ = "attempts"
    __table_args__ = (
        sa.Index("ix_attempts_registration", "registration_id", "id"),
        sa.Index("ix_attempts_created", "created_at"),
    )

    id: str = Col(primary_key=True, max_length=40)
    registration_id: str = Col(max_length=40)
    event_id: str = Col(max_length=40)
    type: str = Col(max_length=32)
    attempt: int
    status_code: int | None = None
    error: str | None = Col(default=None, sa_column=Column(sa.Text, nullable=True))
    duration_ms: int
    created_at: float


class Circuit(SQLModel, table=True):
    """The breaker of one receiver origin (scheme, host, port) that has failed lately,
    shared by every worker; an origin without a row is closed with no failures."""

    __tablename__ = "circuits"

    origin: str = Col(primary_key=True, max_length=300)
    state: str = Col(max_length=16)  # closed | open
    failures: int = 0  # consecutive failed attempts
    opened_at: float | None = None
    cooldown: float | None = None  # the current wait between probes
    probe_at: float | None = None  # when the next probe may go
    probe_until: float | None = None  # the lease of the probe in flight
    updated_at: float


class Setting(SQLModel, table=True):
    """Values the service generates once and keeps, such as the webhook secret."""

    __tablename__ = "settings"

    key: str = Col(primary_key=True, max_length=64)
    value: str = Col(sa_column=Column(sa.Text, nullable=False))


class WebhookSecret(SQLModel, table=True):
    """A client key's signing secrets: the current one and, during a rotation's grace
    period, the one before it. Keyed by the key's owner id, never the key."""

    __tablename__ = "webhook_secrets"

    owner: str = Col(primary_key=True, max_length=64)
    secret: str = Col(sa_column=Column(sa.Text, nullable=False))
    created_at: float
    previous_secret: str | None = Col(default=None, sa_column=Column(sa.Text, nullable=True))
    previous_expires_at: float | None = None


class IdempotencyKey(SQLModel, table=True):
    """The first answer to a ``POST /v1/videos`` made with an ``Idempotency-Key``."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (sa.Index("ix_idempotency_expires", "expires_at"),)

    owner: str = Col(primary_key=True, max_length=64)
    key: str = Col(primary_key=True, max_length=255)
    state: str = Col(max_length=16)  # pending (in flight) | done
    fingerprint: str | None = Col(default=None, max_length=64)
    status_code: int | None = None
    content_type: str | None = Col(default=None, max_length=255)
    body: bytes | None = Col(default=None, sa_column=Column(sa.LargeBinary, nullable=True))
    created_at: float
    expires_at: float


class OwnedVideo(SQLModel, table=True):
    """A task one API key created or registered through status-proxy: what that key may
    read, list, download, remix and delete under ``/v1/videos``."""

    __tablename__ = "owned_videos"
    __table_args__ = (
        sa.Index("ix_owned_videos_listing", "owner", "created_at", "task_id", "upstream"),
        sa.Index("ix_owned_videos_task", "task_id", "upstream"),
    )

    owner: str = Col(primary_key=True, max_length=64)
    upstream: str = Col(primary_key=True, max_length=32)
    task_id: str = Col(primary_key=True, max_length=200)
    # The latest video object seen outside polling (the create answer, a fetch-through),
    # for listing a task status-proxy does not poll.
    video: str | None = Col(default=None, sa_column=Column(sa.Text, nullable=True))
    created_at: float
    updated_at: float
    deleted_at: float | None = None  # deleted upstream through status-proxy
    # Created through status-proxy by this key (POST /v1/videos, a remix), not merely
    # registered: no other key may register it, so none can read or delete it.
    created: bool = Col(default=False, sa_column_kwargs={"server_default": sa.false()})


class DashboardSession(SQLModel, table=True):
    """One dashboard login: made at login, ended by logout or by ``expires_at``. The id is
    the SHA-256 of the cookie's random token, so a copy of the database opens no session;
    ``owner`` is the key digest of the key that logged in."""

    __tablename__ = "dashboard_sessions"
    __table_args__ = (sa.Index("ix_dashboard_sessions_expires", "expires_at"),)

    id: str = Col(primary_key=True, max_length=64)
    owner: str = Col(max_length=64)
    created_at: float
    expires_at: float


class OperatorEvent(SQLModel, table=True):
    """The operator's outbox: status-proxy's own events, sent to OPERATOR_WEBHOOK_URL."""

    __tablename__ = "operator_events"
    __table_args__ = (sa.Index("ix_operator_events_due", "state", "next_attempt_at"),)

    seq: int | None = Col(default=None, primary_key=True)
    id: str = Col(unique=True, max_length=40)
    type: str = Col(max_length=32)
    body: str = Col(sa_column=Column(sa.Text, nullable=False))
    state: str = Col(max_length=16)  # pending | delivered | dead
    attempts: int = 0
    # Due time while pending; the time of the outcome once delivered or dead.
    next_attempt_at: float
    lease_until: float | None = None
    created_at: float


# --- API schemas --------------------------------------------------------------------------

ItemT = TypeVar("ItemT")


def compact_json(value: Any) -> str:
    """The compact UTF-8 JSON text of ``value``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def valid_task_id(value: str) -> bool:
    return len(value) <= TASK_ID_LIMIT and TASK_ID_PATTERN.fullmatch(value) is not None


class RegistrationCreate(BaseModel):
    """Body of ``POST /v1/registrations``."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(
        min_length=1,
        max_length=TASK_ID_LIMIT,
        examples=["video_bbfbc1d2"],
        json_schema_extra={"pattern": TASK_ID_REGEX},
    )
    callback_url: str = Field(
        min_length=1, max_length=CALLBACK_URL_LIMIT, examples=["https://example.com/hooks/video"]
    )
    events: list[EventType] = Field(default_factory=lambda: list(TERMINAL_EVENTS), min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Custom headers sent with each webhook (at most 10; never logged)",
        examples=[{"Authorization": "Bearer receiver-token"}],
    )
    upstream: str = Field(
        DEFAULT_UPSTREAM,
        description="The name of the upstream that knows the task (configured by the operator)",
        json_schema_extra={"pattern": UPSTREAM_REGEX},
    )

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, value: str) -> str:
        if not valid_task_id(value):
            raise ValueError(
                "task_id must be 1-200 characters of A-Z a-z 0-9 _ - . :, start with a letter "
                "or digit, and not contain '..'"
            )
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[EventType]) -> list[EventType]:
        # Progress alone would never be told how its task ended (the contract's rule).
        wanted = set(value)
        if not wanted & set(TERMINAL_EVENTS):
            raise ValueError("events must name at least one of video.completed, video.failed")
        return [event for event in EVENT_ORDER if event in wanted]

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> dict[str, str]:
        return headers.check(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(compact_json(value).encode()) > METADATA_LIMIT:
            raise ValueError(f"metadata must be at most {METADATA_LIMIT} bytes as compact JSON")
        return value


class RegistrationPublic(BaseModel):
    """A registration as the API shows it."""

    object: Literal["registration"] = "registration"
    id: str
    task_id: str
    upstream: str
    callback_url: str
    events: list[EventType]
    metadata: dict[str, Any]
    headers: dict[str, str]
    state: RegistrationState
    created_at: int
    task: dict[str, Any] | None


class AttemptPublic(BaseModel):
    """One delivery attempt as the API shows it."""

    object: Literal["delivery_attempt"] = "delivery_attempt"
    id: str
    event_id: str
    type: EventType
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    created_at: int


class Page(BaseModel, Generic[ItemT]):
    """An OpenAI-style list page."""

    object: Literal["list"] = "list"
    data: list[ItemT]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    """Every error the API answers has this shape."""

    error: ErrorDetail


class WebhookSecretPublic(BaseModel):
    """The calling key's signing secret (``GET /v1/webhook_secret``)."""

    object: Literal["webhook_secret"] = "webhook_secret"
    secret: str = Field(examples=["whsec_…"])
    created_at: int
    previous_expires_at: int | None = Field(
        description="Until when the previous secret also signs (unix time), or null"
    )


GRACE_PERIOD_MAX = 7 * 86400


class SecretRotation(BaseModel):
    """Body of ``POST /v1/webhook_secret/rotate``."""

    model_config = ConfigDict(extra="forbid")

    grace_period: int = Field(
        86400,
        strict=True,  # a whole number of seconds: not true, "60" or 1.5
        ge=0,
        le=GRACE_PERIOD_MAX,
        description="Seconds during which the previous secret still signs, next to the new one",
    )


class Redelivery(BaseModel):
    """Answer of ``POST /v1/registrations/{id}/redeliver``."""

    object: Literal["redelivery"] = "redelivery"
    registration_id: str
    event_id: str


class WebhookTest(BaseModel):
    """Body of ``POST /v1/webhook_test``: the custom headers follow a registration's rules."""

    model_config = ConfigDict(extra="forbid")

    callback_url: str = Field(
        min_length=1, max_length=CALLBACK_URL_LIMIT, examples=["https://example.com/hooks/video"]
    )
    headers: dict[str, str] = Field(default_factory=dict, max_length=10)

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> dict[str, str]:
        return headers.check(value)


class WebhookTestResult(BaseModel):
    """What the receiver did with the test event."""

    object: Literal["webhook_test"] = "webhook_test"
    event_id: str
    status_code: int | None
    error: str | None
    duration_ms: int


class Recover(BaseModel):
    """Body of ``POST /v1/deliveries/recover``: a window of unix times, in seconds."""

    model_config = ConfigDict(extra="forbid")

    since: float = Field(ge=0, allow_inf_nan=False, strict=True, examples=[1764331200])
    until: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, strict=True, examples=[1764417600]
    )


class Recovered(BaseModel):
    """Answer of ``POST /v1/deliveries/recover``."""

    object: Literal["recovery"] = "recovery"
    recovered: int
