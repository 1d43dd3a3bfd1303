"""The part of every service's app factory that is the same for all of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp

from servicekit.health import HealthState, health_router
from servicekit.logs import configure_logging
from servicekit.metrics import (
    PROMETHEUS_CONTENT_TYPE,
    HttpServerMetrics,
    MetricsMiddleware,
    new_registry,
    render,
)
from servicekit.middleware import AccessLogMiddleware, RequestIdMiddleware
from servicekit.policy import attach_policy, server_policy
from servicekit.problem import install_problem_handlers
from servicekit.server_span import ServerSpanMiddleware
from servicekit.settings import ServiceSettings
from servicekit.tracing import current_tracer_provider


class ServiceApp(FastAPI):
    """FastAPI with, when tracing, the SERVER span middleware around its whole stack.

    Outermost, outside Starlette's `ServerErrorMiddleware`, which a `middleware=` entry
    cannot be: so the span sees the 500 sent for an unhandled exception, and everything
    logged while serving carries the span's ids.
    """

    server_span_tracer: Tracer | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.server_span_tracer is None:
            return stack
        return ServerSpanMiddleware(stack, tracer=self.server_span_tracer)


def new_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    version: str,
    description: str,
    health: HealthState,
    lifespan: Any = None,
    inner_middleware: Sequence[Middleware] = (),
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """A FastAPI app with JSON logs, request ids, access logs, RED metrics, tracing,
    probes, /metrics, problem+json, and the drain and head limits its worker applies.

    `inner_middleware` runs inside the request-id, access-log and metrics middleware,
    so whatever it answers (the gateway's proxy path, for one) is logged, counted and
    carries a request id. `registry` defaults to a new one (tests inject their own);
    `tracer_provider` to the one gunicorn's `post_fork` installed, if any.
    """
    configure_logging(
        settings.log_level,
        log_file=settings.log_file,
        max_bytes=settings.log_file_max_bytes,
        backups=settings.log_file_backups,
    )
    registry = registry if registry is not None else new_registry()
    outer = [Middleware(RequestIdMiddleware)]
    if settings.access_log:
        outer.append(Middleware(AccessLogMiddleware))
    outer.append(Middleware(MetricsMiddleware, metrics=HttpServerMetrics(registry)))
    app = ServiceApp(
        # FastAPI's own OpenTelemetry integration would trace and count every request a
        # second time, through the global providers; servicekit does both explicitly.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title=title,
        version=version,
        description=description,
        lifespan=lifespan,
        middleware=[*outer, *inner_middleware],
    )
    install_problem_handlers(app)
    app.include_router(health_router(health))
    # For the gunicorn worker (servicekit.workers): drain `health` on SIGTERM, guard heads.
    attach_policy(app, server_policy(settings, health))
    _add_metrics_endpoint(app, registry)
    tracer_provider = tracer_provider or current_tracer_provider()
    if tracer_provider is not None:
        # Probes and scrapes (UNTRACED_PATHS) get no span; see servicekit.server_span.
        app.server_span_tracer = tracer_provider.get_tracer("servicekit.server_span")
    return app


def _add_metrics_endpoint(app: FastAPI, registry: CollectorRegistry) -> None:
    @app.get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics.",
        description="Prometheus text format, summed over all gunicorn workers of this pod.",
        response_class=Response,
        tags=["health"],
    )
    async def metrics() -> Response:
        return Response(render(registry), media_type=PROMETHEUS_CONTENT_TYPE)
