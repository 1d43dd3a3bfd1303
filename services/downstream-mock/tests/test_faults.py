from __future__ import annotations

import random
import time

import httpx
import pytest
from fastapi import FastAPI
from starlette.middleware import Middleware

from downstream_mock.app import create_app
from downstream_mock.faults import FaultMiddleware, is_exempt
from downstream_mock.settings import Settings

from .support import assert_problem, running


async def test_errors_apply_to_echo(client: httpx.AsyncClient) -> None:
    await client.put("/admin/faults", json={"error_rate": 1, "error_status": 502})
    response = await client.get("/echo")
    body = assert_problem(response, 502, "injected-fault")
    assert response.headers["x-mock-fault"] == "error"
    # Injected failures carry a request id like every other response.
    assert body["request_id"] == response.headers["x-request-id"]
    await client.delete("/admin/faults")
    assert (await client.get("/echo")).status_code == 200


async def test_unregistered_5xx_status(client: httpx.AsyncClient) -> None:
    await client.put("/admin/faults", json={"error_rate": 1, "error_status": 599})
    body = assert_problem(await client.post("/items", json={}), 599, "injected-fault")
    assert body["title"] == "Status 599"


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/health", "/admin/faults", "/docs"])
async def test_probes_docs_and_admin_are_never_faulted(
    client: httpx.AsyncClient, path: str
) -> None:
    await client.put("/admin/faults", json={"error_rate": 1, "latency_seconds": 0.3})
    start = time.monotonic()
    response = await client.get(path)
    assert response.status_code == 200
    assert "x-mock-fault" not in response.headers
    assert time.monotonic() - start < 0.3


async def test_latency_applies_to_echo(client: httpx.AsyncClient) -> None:
    await client.put("/admin/faults", json={"latency_seconds": 0.2, "latency_jitter_seconds": 0.05})
    start = time.monotonic()
    response = await client.get("/echo")
    elapsed = time.monotonic() - start
    assert response.status_code == 200
    assert 0.2 <= elapsed < 1.0


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/livez", True),
        ("/readyz", True),
        ("/health", True),
        ("/metrics", True),
        ("/admin", True),
        ("/admin/faults", True),
        ("/admin/readyz/disable", True),
        ("/administrator", False),
        ("/echo/admin/faults", False),
        ("/echo", False),
        ("/livez/x", False),
    ],
)
def test_exempt_paths(path: str, exempt: bool) -> None:
    assert is_exempt(path) is exempt


async def test_error_rate_is_a_share_of_requests(settings: Settings) -> None:
    # The app as built, with its fault middleware given a seeded generator.
    app = create_app(settings)
    (index,) = [
        i for i, m in enumerate(app.user_middleware) if getattr(m, "cls", None) is FaultMiddleware
    ]
    app.user_middleware[index] = Middleware(FaultMiddleware, rng=random.Random(7))
    async with running(app) as client:
        await client.put("/admin/faults", json={"error_rate": 0.3})
        statuses = [(await client.get("/echo")).status_code for _ in range(400)]
    failed = statuses.count(503)
    assert statuses.count(200) + failed == 400
    assert 80 <= failed <= 160


async def test_without_lifespan_state_nothing_is_injected() -> None:
    inner = FastAPI()

    @inner.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    transport = httpx.ASGITransport(app=FaultMiddleware(inner))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/x")).json() == {"ok": True}
