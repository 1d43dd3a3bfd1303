"""The part of every service's app factory that is the same for all of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware

from servicekit.health import HealthState, health_router
from servicekit.logs import configure_logging
from servicekit.middleware import AccessLogMiddleware, RequestIdMiddleware
from servicekit.problem import install_problem_handlers
from servicekit.settings import ServiceSettings


def new_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    version: str,
    description: str,
    health: HealthState,
    lifespan: Any = None,
    inner_middleware: Sequence[Middleware] = (),
) -> FastAPI:
    """A FastAPI app with JSON logs, request ids, access logs, probes and problem+json.

    `inner_middleware` runs inside the request-id and access-log middleware, so whatever
    it answers (the gateway's proxy path, for one) is logged and carries a request id.
    """
    configure_logging(
        settings.log_level,
        log_file=settings.log_file,
        max_bytes=settings.log_file_max_bytes,
        backups=settings.log_file_backups,
    )
    outer = [Middleware(RequestIdMiddleware)]
    if settings.access_log:
        outer.append(Middleware(AccessLogMiddleware))
    app = FastAPI(
        title=title,
        version=version,
        description=description,
        lifespan=lifespan,
        middleware=[*outer, *inner_middleware],
    )
    install_problem_handlers(app)
    app.include_router(health_router(health))
    return app
