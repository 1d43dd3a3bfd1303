from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi import FastAPI

from servicekit.health import HealthState, health_router
from servicekit.problem import PROBLEM_CONTENT_TYPE, install_problem_handlers

ClientFactory = Callable[..., httpx.AsyncClient]


def health_app(health: HealthState) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(health_router(health))
    return app


async def test_ready_until_draining(asgi_client: ClientFactory) -> None:
    health = HealthState()
    async with asgi_client(health_app(health)) as client:
        before = await client.get("/readyz")
        health.start_draining()
        after = await client.get("/readyz")

    assert before.status_code == 200
    assert before.json() == {"status": "ready"}

    assert after.status_code == 503
    assert after.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert after.headers["retry-after"] == "5"
    body = after.json()
    assert body["status"] == 503
    assert body["type"] == "urn:platform:problem:not-ready"
    assert "draining" in body["detail"]


async def test_liveness_and_health_ignore_draining(asgi_client: ClientFactory) -> None:
    health = HealthState()
    health.start_draining()
    async with asgi_client(health_app(health)) as client:
        livez = await client.get("/livez")
        summary = await client.get("/health")
    assert (livez.status_code, livez.json()) == (200, {"status": "alive"})
    assert (summary.status_code, summary.json()) == (200, {"status": "ok"})


async def test_subclasses_add_reasons_not_to_be_ready(asgi_client: ClientFactory) -> None:
    class Switchable(HealthState):
        def __init__(self) -> None:
            super().__init__()
            self.disabled = True

        def not_ready_reason(self) -> str | None:
            return "disabled by an operator" if self.disabled else super().not_ready_reason()

    health = Switchable()
    async with asgi_client(health_app(health)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "disabled by an operator"


def test_probe_operations_are_documented() -> None:
    schema = health_app(HealthState()).openapi()
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert operations == {"livez", "readyz", "health"}
    readyz = schema["paths"]["/readyz"]["get"]
    assert PROBLEM_CONTENT_TYPE in readyz["responses"]["503"]["content"]
