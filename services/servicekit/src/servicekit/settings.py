"""One typed settings class per service, read once at start-up.

Each service subclasses `ServiceSettings` with its own `env_prefix`. `load_settings`
turns a validation error into a single line that names the environment variable, so a
bad deployment stops with a message an operator can act on instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import ByteSize, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error"]


class ServiceSettings(BaseSettings):
    """What every service needs to serve HTTP under gunicorn and to log."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True)

    host: str = Field(default="127.0.0.1", description="address to bind; 0.0.0.0 in containers")
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=2, ge=1, le=64, description="gunicorn worker processes")
    graceful_timeout: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="seconds from SIGTERM until gunicorn kills a worker; includes drain_delay",
    )
    drain_delay: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description=(
            "seconds a worker keeps serving after SIGTERM, /readyz already 503, so load "
            "balancers stop sending before it stops accepting; less than graceful_timeout"
        ),
    )
    keepalive: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="idle keep-alive seconds; longer than any client pool in front of us",
    )
    log_level: LogLevel = "info"
    log_file: Path | None = Field(
        default=None, description="also write JSON lines to this rotating file"
    )
    log_file_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    log_file_backups: int = Field(default=5, ge=0, le=100)
    access_log: bool = True
    # Request heads. httptools itself has no limit on header size or count, and uvicorn
    # no deadline for a head to arrive: see servicekit.protocol.
    max_header_count: int = Field(
        default=100, ge=1, le=10_000, description="most header fields in one request"
    )
    max_header_bytes: ByteSize = Field(
        default=ByteSize(32 * 1024),
        ge=1024,
        le=16 * 1024 * 1024,
        description="most bytes of header names and values in one request",
    )
    client_header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="seconds a client gets to send a whole request head, from its first byte",
    )

    @model_validator(mode="after")
    def _drain_fits_in_the_grace_period(self) -> Self:
        # gunicorn kills a worker `graceful_timeout` seconds after SIGTERM, whatever it is
        # doing: a drain delay as long would leave no time to finish in-flight requests.
        if self.drain_delay >= self.graceful_timeout:
            prefix = str(self.model_config.get("env_prefix", "")).upper()
            raise ValueError(
                f"{prefix}DRAIN_DELAY ({self.drain_delay:g}) must be less than "
                f"{prefix}GRACEFUL_TIMEOUT ({self.graceful_timeout}): gunicorn kills workers "
                "graceful_timeout seconds after SIGTERM, drain delay included"
            )
        return self


class SettingsError(SystemExit):
    """Start-up must stop: the message is one line naming the setting."""


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Read `cls` from the environment, or raise `SettingsError` with one clear line."""
    try:
        return cls()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, cls)) from None


def describe_validation_error(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """The first problem, phrased as `invalid setting GATEWAY_PORT: <why>`."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    error = exc.errors()[0]
    if not error["loc"]:
        # A check across several settings; its message names each of them.
        reason = error["msg"].removeprefix("Value error, ")
        return f"invalid settings: {reason}"
    field = ".".join(str(part) for part in error["loc"])
    name = f"{prefix}{field}".upper()
    got = "" if error["type"] == "missing" else f" (got {error.get('input')!r})"
    more = len(exc.errors()) - 1
    suffix = f"; and {more} more" if more else ""
    return f"invalid setting {name}: {error['msg']}{got}{suffix}"
