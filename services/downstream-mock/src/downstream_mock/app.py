"""The downstream-mock's app factory.

Production: `gunicorn -c services/downstream-mock/gunicorn.conf.py
'downstream_mock.app:create_app()'`. Development: `uvicorn --factory
downstream_mock.app:create_app --reload --port 8081`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware

from downstream_mock.admin import admin_router
from downstream_mock.deps import SHARED_KEY, STARTED_KEY
from downstream_mock.echo import echo_router
from downstream_mock.errors import install_error_handler
from downstream_mock.faults import FaultMiddleware
from downstream_mock.flaky import flaky_router
from downstream_mock.health import MockHealth
from downstream_mock.info import info_router
from downstream_mock.items import items_router
from downstream_mock.settings import Settings
from downstream_mock.state import SharedState
from downstream_mock.status import status_router
from downstream_mock.streams import streams_router
from downstream_mock.upload import upload_router
from servicekit.service import new_service_app
from servicekit.settings import load_settings

DESCRIPTION = (
    "A podinfo-style downstream to put behind the gateway: echo, chosen statuses and "
    "delays, large and slow bodies, uploads, a CRUD resource, flaky calls, and fault "
    "injection and readiness switches shared by all workers."
)


def package_version() -> str:
    try:
        return distribution_version("downstream-mock")
    except PackageNotFoundError:
        # Running from a source tree that was never installed.
        return "0.0.0+unknown"


def create_app(
    settings: Settings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the mock. Reads the environment only when `settings` is None.

    `registry` and `tracer_provider` default to a new registry and to the provider
    gunicorn's `post_fork` installed (none: tracing off); tests inject their own.
    """
    if settings is None:
        settings = load_settings(Settings)
    health = MockHealth()
    version = package_version()
    state_dir = settings.state_dir

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        shared = await anyio.to_thread.run_sync(SharedState.open, state_dir)
        health.control = shared.control
        try:
            yield {SHARED_KEY: shared, STARTED_KEY: time.monotonic()}
        finally:
            health.control = None
            await anyio.to_thread.run_sync(shared.close)

    app = new_service_app(
        settings,
        title="downstream-mock",
        version=version,
        description=DESCRIPTION,
        health=health,
        lifespan=lifespan,
        # Inside the request-id and access-log middleware, so injected failures are
        # logged and carry a request id like any other response.
        inner_middleware=[Middleware(FaultMiddleware)],
        registry=registry,
        tracer_provider=tracer_provider,
    )
    install_error_handler(app)
    app.include_router(echo_router())
    app.include_router(status_router(settings))
    app.include_router(streams_router(settings))
    app.include_router(upload_router(settings))
    app.include_router(items_router(settings))
    app.include_router(flaky_router())
    app.include_router(info_router(settings, version=version))
    app.include_router(admin_router(settings))
    return app
