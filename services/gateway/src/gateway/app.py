"""The gateway's app factory.

gunicorn -c services/gateway/gunicorn.conf.py 'gateway.app:create_app()'
uvicorn --factory gateway.app:create_app --reload        # development
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx
from fastapi import FastAPI, Request
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware
from starlette.responses import Response

from gateway.cors import Cors
from gateway.dispatcher import GUARDS_STATE_KEY, UPSTREAM_STATE_KEY, ProxyDispatcher
from gateway.guards import PolicyMetrics, build_guards
from gateway.hygiene import RequestLimits
from gateway.metrics import GatewayMetrics
from gateway.ratelimit_redis import connect_redis
from gateway.routing import RouteTable, load_route_table
from gateway.settings import Settings
from gateway.upstream import UpstreamClient
from gateway.upstream_aiohttp import AiohttpUpstream
from gateway.upstream_h1 import H1Upstream
from gateway.upstream_httpx import HttpxUpstream
from servicekit.health import HealthState
from servicekit.metrics import new_registry
from servicekit.problem import ProblemResponse
from servicekit.service import new_service_app
from servicekit.settings import load_settings
from servicekit.tracing import current_tracer_provider

try:
    VERSION = version("gateway")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0.0.0"


def create_app(
    settings: Settings | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the gateway. Reads the environment only when `settings` is None.

    With `transport`, upstream calls go through an httpx client on that transport (the
    test seam); without it, through the client `settings.upstream_client` names: the
    gateway's own HTTP/1.1 client, or aiohttp as the fallback.
    `registry` and `tracer_provider` default to a new registry and to the provider
    gunicorn's `post_fork` installed (none: tracing off).
    """
    settings = settings or load_settings(Settings)
    routes = load_route_table(settings.routes_file)
    health = HealthState()
    registry = registry if registry is not None else new_registry()
    tracer_provider = tracer_provider or current_tracer_provider()
    tracer = tracer_provider.get_tracer("gateway", VERSION) if tracer_provider else None
    policy_metrics = PolicyMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        upstream: UpstreamClient
        if transport is not None:
            upstream = HttpxUpstream(httpx.AsyncClient(transport=transport))
        elif settings.upstream_client == "aiohttp":
            upstream = AiohttpUpstream(
                max_connections=settings.upstream_max_connections,
                keepalive_seconds=settings.upstream_keepalive_seconds,
            )
        else:
            upstream = H1Upstream(
                max_connections=settings.upstream_max_connections,
                keepalive_seconds=settings.upstream_keepalive_seconds,
            )
        redis_url = settings.redis_url
        guards = build_guards(
            routes.routes,
            policy_metrics,
            redis=connect_redis(
                redis_url.get_secret_value(),
                timeout=settings.redis_timeout_seconds,
                max_connections=settings.redis_max_connections,
            )
            if redis_url is not None
            else None,
            redis_timeout=settings.redis_timeout_seconds,
            memory_max_keys=settings.rate_limit_memory_max_keys,
            trusted_proxy_hops=settings.trusted_proxy_hops,
        )
        try:
            await guards.start()
            yield {UPSTREAM_STATE_KEY: upstream, GUARDS_STATE_KEY: guards}
        finally:
            health.start_draining()
            await guards.aclose()
            await upstream.aclose()

    app = new_service_app(
        settings,
        title="gateway",
        version=VERSION,
        description="Routes requests to upstream services by path prefix.",
        health=health,
        lifespan=lifespan,
        inner_middleware=[
            Middleware(
                ProxyDispatcher,
                routes=routes,
                metrics=GatewayMetrics(registry),
                tracer=tracer,
                limits=RequestLimits(
                    max_header_count=settings.max_header_count,
                    max_header_bytes=int(settings.max_header_bytes),
                    body_timeout=settings.client_body_timeout,
                ),
                cors={r.name: Cors(r.cors) for r in routes.routes if r.cors is not None},
            )
        ],
        registry=registry,
        tracer_provider=tracer_provider,
    )
    app.add_exception_handler(404, _no_route)
    _add_index(app, routes)
    return app


async def _no_route(request: Request, exc: Exception) -> Response:
    return ProblemResponse(404, "no route matches this path", slug="no-route")


def _add_index(app: FastAPI, routes: RouteTable) -> None:
    summary = [{"name": r.name, "prefix": r.prefix} for r in routes.routes]

    @app.get(
        "/",
        operation_id="index",
        summary="Name, version and routes.",
        description="What this gateway is and which path prefixes it routes.",
        tags=["meta"],
    )
    async def index() -> dict[str, Any]:
        return {"name": "gateway", "version": VERSION, "routes": summary}
