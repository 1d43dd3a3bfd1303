"""The gateway's settings: `GATEWAY_*` environment variables, read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from servicekit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    port: int = Field(default=8080, ge=1, le=65535)
    routes_file: Path = Field(description="the YAML route table")
    upstream_client: Literal["h1", "aiohttp"] = Field(
        default="h1",
        description=(
            "the HTTP client for upstream calls: h1 (the gateway's own HTTP/1.1 client) or "
            "aiohttp (the fallback)"
        ),
    )
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
    client_body_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="seconds a request body may stop arriving before the gateway answers 408",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="redis://host:6379/0; needed when a route uses rate_limit.backend redis",
    )
    redis_timeout_seconds: float = Field(
        default=0.1, gt=0, le=5, description="per rate-limit check: connect, pool wait, reply"
    )
    redis_max_connections: int = Field(default=64, ge=1, le=10_000, description="per worker")
    trusted_proxy_hops: int = Field(
        default=0,
        ge=0,
        le=10,
        description="proxies in front of the gateway whose X-Forwarded-For entries are trusted",
    )
    rate_limit_memory_max_keys: int = Field(
        default=50_000, ge=1, le=10_000_000, description="per route and worker (memory backend)"
    )
