"""Settings, read from STATUS_PROXY_* environment variables and the ``.env`` file.

The environment wins over ``.env`` (the file in the current directory, as docker compose
reads the one next to its compose file). An empty value is the same as an unset one:
compose renders ``${VAR:-}`` as an empty string, and ``.env.example`` leaves settings
empty to mean "the default".
"""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service import signing

ENV_FILE = ".env"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service; durations are seconds."""

    # Errors never quote the value: it may be a key or a secret.
    model_config = SettingsConfigDict(
        env_prefix="STATUS_PROXY_",
        extra="ignore",
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        hide_input_in_errors=True,
    )

    database_url: str = "sqlite:///./data/status-proxy.db"
    upstream_base_url: str = "https://octopusx.ai"
    upstream_api_key: SecretStr | None = None
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None
    callback_allow_private: bool = False
    # Non-public networks callbacks may reach all the same (CIDRs, comma-separated).
    callback_allow_networks: Annotated[
        tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], NoDecode
    ] = ()
    poll_interval_min: float = Field(5.0, gt=0)
    poll_interval_max: float = Field(30.0, gt=0)
    upstream_rate_limit: float = Field(20.0, ge=0)  # 0 switches the limit off
    upstream_max_concurrency: int = Field(16, ge=1)
    upstream_timeout: float = Field(30.0, gt=0)
    task_timeout: float = Field(86400.0, gt=0)
    not_found_grace: float = Field(120.0, ge=0)
    delivery_timeout: float = Field(15.0, gt=0)
    delivery_retry_schedule: Annotated[tuple[float, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    delivery_concurrency: int = Field(64, ge=1)
    delivery_concurrency_per_origin: int = Field(8, ge=1)
    # An origin's circuit opens after 5 failures in a row; one probe after this cool-down,
    # doubling after each failed probe up to the maximum.
    circuit_cooldown: float = Field(30.0, gt=0)
    circuit_cooldown_max: float = Field(600.0, gt=0)
    upload_limit: int = Field(50 * 1024 * 1024, ge=1)
    log_level: str = "INFO"
    # A "completed" answer without a video_url is polled this many more times before
    # the webhook goes out anyway.
    empty_video_retries: int = Field(3, ge=0)
    # Ended registrations, their attempts and unneeded snapshots are purged this long after.
    retention: float = Field(30 * 86400.0, gt=0)
    # Between SIGTERM and closing the listener, /readyz answers 503 while requests are
    # still served, so a load balancer moves traffic away before connections are refused.
    shutdown_delay: float = Field(0.0, ge=0)
    # Where status-proxy sends its own signed events (dead deliveries, circuits, the
    # upstream key); the operator's own setting, so the callback guard does not apply.
    # Its path or query may carry a token (chat webhooks do): kept secret like a key.
    operator_webhook_url: SecretStr | None = None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return _split(value)

    @field_validator("callback_allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        parts = _split(value)
        if not isinstance(parts, list | tuple):
            return parts
        networks = []
        for part in parts:
            try:
                networks.append(ipaddress.ip_network(part, strict=True))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{part!r} is not a network in CIDR form: {exc}") from None
        return tuple(networks)

    @field_validator("delivery_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        return _split(value)

    @field_validator("delivery_retry_schedule")
    @classmethod
    def _non_negative(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(wait < 0 for wait in value):
            raise ValueError("retry waits must not be negative")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        async_url(value)  # raises on a scheme we cannot drive
        return value

    @field_validator("upstream_base_url")
    @classmethod
    def _absolute_http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://octopusx.ai")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("operator_webhook_url", mode="before")
    @classmethod
    def _operator_url(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # set but empty: not set
        if isinstance(value, str):
            parts = urlsplit(value.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an absolute http or https URL")
            return value.strip()
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        # After SecretStr wrapping, so a refused value is shown masked, never in clear.
        if value is not None:
            try:
                signing.check(value.get_secret_value())
            except signing.MalformedSecret as exc:
                raise ValueError(
                    f"STATUS_PROXY_WEBHOOK_SECRET must be {signing.SHAPE} (Standard Webhooks), "
                    f"but {exc}; leave it unset to have one generated, or make one with: "
                    f'python -c "import base64, os; '
                    f"print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
                ) from None
        return value

    @model_validator(mode="after")
    def _interval_order(self) -> Settings:
        if self.poll_interval_max < self.poll_interval_min:
            raise ValueError("POLL_INTERVAL_MAX must be at least POLL_INTERVAL_MIN")
        return self

    @property
    def async_database_url(self) -> str:
        """The database URL with the async driver SQLAlchemy needs."""
        return async_url(self.database_url)

    @property
    def is_sqlite(self) -> bool:
        return self.async_database_url.startswith("sqlite")


def async_url(url: str) -> str:
    """Normalise a plain database URL to its async driver."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("the database URL needs a scheme, e.g. sqlite:///./data/status-proxy.db")
    base = scheme.split("+", 1)[0].lower()
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    raise ValueError(f"unsupported database scheme {scheme!r}: use sqlite or postgresql")
