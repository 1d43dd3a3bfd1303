"""One typed settings class per service, read once at start-up.

Each service subclasses `ServiceSettings` with its own `env_prefix`. `load_settings`
turns a validation error into a single line that names the environment variable, so a
bad deployment stops with a message an operator can act on instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error"]


class ServiceSettings(BaseSettings):
    """What every service needs to serve HTTP under gunicorn and to log."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True)

    host: str = Field(default="127.0.0.1", description="address to bind; 0.0.0.0 in containers")
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=2, ge=1, le=64, description="gunicorn worker processes")
    graceful_timeout: int = Field(
        default=30, ge=1, le=3600, description="seconds a worker gets to finish on SIGTERM"
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
    field = ".".join(str(part) for part in error["loc"])
    name = f"{prefix}{field}".upper()
    got = "" if error["type"] == "missing" else f" (got {error.get('input')!r})"
    more = len(exc.errors()) - 1
    suffix = f"; and {more} more" if more else ""
    return f"invalid setting {name}: {error['msg']}{got}{suffix}"
