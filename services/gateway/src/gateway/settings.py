"""The gateway's settings: `GATEWAY_*` environment variables, read once at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from servicekit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    port: int = Field(default=8080, ge=1, le=65535)
    routes_file: Path = Field(description="the YAML route table")
    upstream_max_connections: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="pooled upstream connections per worker; keep it above peak concurrency",
    )
    upstream_keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="idle upstream connections close after this; below the upstream's keep-alive",
    )
