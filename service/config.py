"""Settings, read from STATUS_PROXY_* environment variables and the ``.env`` file.

The environment wins over ``.env`` (the file in the current directory, as docker compose
reads the one next to its compose file). An empty value is the same as an unset one:
compose renders ``${VAR:-}`` as an empty string, and ``.env.example`` leaves settings
empty to mean "the default".
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service import signing, upstreams

ENV_FILE = ".env"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


DEFAULT_UPSTREAM = "default"
DEFAULT_FAMILY = "openai-video"  # the family of the upstream named "default"
UPSTREAM_NAME = re.compile(r"[a-z0-9-]{1,32}")
UPSTREAMS_VARIABLE = "STATUS_PROXY_UPSTREAMS"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream, every value resolved (durations in seconds, ``rate_limit`` requests
    per second, 0 for no limit). ``family`` names a module of ``service.upstreams``."""

    name: str
    base_url: str
    api_key: SecretStr | None
    family: str
    rate_limit: float
    max_concurrency: int
    timeout: float
    poll_interval_min: float
    poll_interval_max: float


def _header_safe_key(value: SecretStr | None) -> SecretStr | None:
    """An upstream key goes into an ``Authorization`` header: visible ASCII only (RFC 9110
    field values; Bearer tokens are narrower still). The message never quotes the key."""
    if value is None:
        return None
    key = value.get_secret_value()
    if not key or not all("!" <= ch <= "~" for ch in key):
        raise ValueError(
            "must be visible ASCII characters only (no spaces, control characters or "
            "non-ASCII letters): it is sent in an Authorization header"
        )
    return value


def _absolute_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL such as https://octopusx.ai")
    return value.rstrip("/")


class UpstreamEntry(BaseModel):
    """One upstream of ``STATUS_PROXY_UPSTREAMS``; unset values take the global settings."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    base_url: str
    api_key: SecretStr = Field(min_length=1)
    family: str
    rate_limit: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_concurrency: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0, allow_inf_nan=False)
    poll_interval_min: float | None = Field(None, gt=0, allow_inf_nan=False)
    poll_interval_max: float | None = Field(None, gt=0, allow_inf_nan=False)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return _absolute_http_url(value)

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr) -> SecretStr | None:
        return _header_safe_key(value)

    @field_validator("family")
    @classmethod
    def _family(cls, value: str) -> str:
        if value not in upstreams.FAMILIES:
            raise ValueError(f"must be one of {', '.join(sorted(upstreams.FAMILIES))}")
        return value


class _Twice(ValueError):
    """A JSON object names the same field twice."""


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise _Twice(f"{str(name)[:40]!r} is given twice; give each name once")
        found[name] = value
    return found


def parse_upstreams(value: object) -> dict[str, UpstreamEntry]:
    """``STATUS_PROXY_UPSTREAMS`` read and checked; a ValueError names the setting, the
    upstream and the field, and never quotes a value (it may hold a key)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}  # set but empty: not set
    if isinstance(value, str):
        try:
            value = json.loads(value, object_pairs_hook=_once_each)
        except _Twice as exc:
            raise ValueError(f"{UPSTREAMS_VARIABLE}: {exc}") from None
        except ValueError as exc:
            raise ValueError(
                f"{UPSTREAMS_VARIABLE} is not JSON (line {getattr(exc, 'lineno', '?')}, "
                f"column {getattr(exc, 'colno', '?')}); it must be an object such as "
                '{"acme": {"base_url": "https://…", "api_key": "…", "family": "openai-video"}}'
            ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{UPSTREAMS_VARIABLE} must be a JSON object keyed by upstream name")
    found: dict[str, UpstreamEntry] = {}
    for name, entry in value.items():
        checked = _upstream_name(name)
        found[checked] = _entry(checked, entry)
    return found


def _upstream_name(name: object) -> str:
    if name == DEFAULT_UPSTREAM:
        raise ValueError(
            f"{UPSTREAMS_VARIABLE}: 'default' is the upstream of the STATUS_PROXY_UPSTREAM_* "
            "settings and cannot be redefined here; give this one another name"
        )
    if not isinstance(name, str) or not UPSTREAM_NAME.fullmatch(name):
        raise ValueError(
            f"{UPSTREAMS_VARIABLE}: upstream names are 1-32 characters of a-z 0-9 and -; "
            f"{str(name)[:40]!r} is not one"
        )
    return name


def _entry(name: str, entry: object) -> UpstreamEntry:
    if isinstance(entry, UpstreamEntry):
        return entry
    if not isinstance(entry, dict):
        raise ValueError(f"{UPSTREAMS_VARIABLE}: upstream {name!r} must be a JSON object")
    try:
        return UpstreamEntry.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'entry'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ValueError(f"{UPSTREAMS_VARIABLE}: upstream {name!r}: {problems}") from None


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
    # More upstreams by name, next to "default" (the UPSTREAM_* settings above): a JSON
    # object of UpstreamEntry (the contract's "Upstreams").
    upstreams: Annotated[dict[str, UpstreamEntry], NoDecode] = Field(default_factory=dict)

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

    @field_validator("upstream_api_key")
    @classmethod
    def _upstream_key(cls, value: SecretStr | None) -> SecretStr | None:
        return _header_safe_key(value)

    @field_validator("upstream_base_url")
    @classmethod
    def _absolute_http(cls, value: str) -> str:
        return _absolute_http_url(value)

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

    @field_validator("upstreams", mode="before")
    @classmethod
    def _upstreams(cls, value: object) -> object:
        return parse_upstreams(value)

    @model_validator(mode="after")
    def _interval_order(self) -> Settings:
        if self.poll_interval_max < self.poll_interval_min:
            raise ValueError("POLL_INTERVAL_MAX must be at least POLL_INTERVAL_MIN")
        for name, config in self.upstream_configs().items():
            if config.poll_interval_max < config.poll_interval_min:
                raise ValueError(
                    f"{UPSTREAMS_VARIABLE}: upstream {name!r}: poll_interval_max must be at "
                    "least poll_interval_min (unset ones take the global settings)"
                )
        return self

    def upstream_configs(self) -> dict[str, UpstreamConfig]:
        """Every upstream by name, ``default`` first; unset values take the global ones."""
        found = {
            DEFAULT_UPSTREAM: UpstreamConfig(
                name=DEFAULT_UPSTREAM,
                base_url=self.upstream_base_url,
                api_key=self.upstream_api_key,
                family=DEFAULT_FAMILY,
                rate_limit=self.upstream_rate_limit,
                max_concurrency=self.upstream_max_concurrency,
                timeout=self.upstream_timeout,
                poll_interval_min=self.poll_interval_min,
                poll_interval_max=self.poll_interval_max,
            )
        }
        for name, entry in self.upstreams.items():
            found[name] = UpstreamConfig(
                name=name,
                base_url=entry.base_url,
                api_key=entry.api_key,
                family=entry.family,
                rate_limit=_given(entry.rate_limit, self.upstream_rate_limit),
                max_concurrency=_given(entry.max_concurrency, self.upstream_max_concurrency),
                timeout=_given(entry.timeout, self.upstream_timeout),
                poll_interval_min=_given(entry.poll_interval_min, self.poll_interval_min),
                poll_interval_max=_given(entry.poll_interval_max, self.poll_interval_max),
            )
        return found

    def scoped(self, config: UpstreamConfig) -> Settings:
        """These settings as one upstream's poller sees them: its own address, key, rate
        limit, concurrency, timeout and poll intervals in place of the global ones."""
        return self.model_copy(
            update={
                "upstream_base_url": config.base_url,
                "upstream_api_key": config.api_key,
                "upstream_rate_limit": config.rate_limit,
                "upstream_max_concurrency": config.max_concurrency,
                "upstream_timeout": config.timeout,
                "poll_interval_min": config.poll_interval_min,
                "poll_interval_max": config.poll_interval_max,
            }
        )

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
