"""The gateway's own endpoints, its OpenAPI document, and the production upstream client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from asgi_lifespan import LifespanManager
from fastapi.routing import APIRoute
from starlette.types import ASGIApp

from gateway.app import VERSION, create_app
from gateway.settings import Settings
from servicekit.problem import PROBLEM_CONTENT_TYPE

Gateway = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
GatewayApp = Callable[..., AbstractAsyncContextManager[ASGIApp]]
WriteRoutes = Callable[[str], Path]

OWN_ROUTES = {"/", "/livez", "/readyz", "/health", "/metrics"}


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"the upstream was called for {request.url}")


async def test_index_names_the_gateway_and_its_routes(gateway: Gateway) -> None:
    async with gateway(never_called) as client:
        response = await client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "gateway"
    assert body["version"] == VERSION
    assert {"name": "api", "prefix": "/api"} in body["routes"]
    assert {"name": "scoped", "prefix": "/scoped"} in body["routes"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/livez", {"status": "alive"}),
        ("/readyz", {"status": "ready"}),
        ("/health", {"status": "ok"}),
    ],
)
async def test_probes(gateway: Gateway, path: str, body: dict[str, str]) -> None:
    async with gateway(never_called) as client:
        response = await client.get(path)
    assert (response.status_code, response.json()) == (200, body)
    assert response.headers["x-request-id"]


async def test_metrics_and_docs_are_served(gateway: Gateway) -> None:
    async with gateway(never_called) as client:
        metrics = await client.get("/metrics")
        docs = await client.get("/docs")
        schema = await client.get("/openapi.json")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert schema.status_code == 200
    assert schema.json()["info"]["title"] == "gateway"


async def test_an_unrouted_path_is_404_problem(gateway: Gateway) -> None:
    async with gateway(never_called) as client:
        response = await client.get("/nowhere/at/all")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["type"] == "urn:platform:problem:no-route"
    assert body["request_id"] == response.headers["x-request-id"]


async def test_own_methods_are_checked(gateway: Gateway) -> None:
    async with gateway(never_called) as client:
        response = await client.post("/livez")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE


async def test_readyz_fails_once_shutdown_begins(gateway_app: GatewayApp) -> None:
    async with gateway_app(never_called) as app:
        pass
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.example") as client:
        readyz = await client.get("/readyz")
        livez = await client.get("/livez")
    assert readyz.status_code == 503
    assert readyz.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert livez.status_code == 200


def test_a_bad_route_file_stops_the_factory(write_routes: WriteRoutes) -> None:
    path = write_routes("routes: [{name: a, prefix: /a, upstream: 'ftp://x'}]")
    with pytest.raises(SystemExit) as caught:
        create_app(Settings(routes_file=path))
    assert "route 'a'" in str(caught.value.code)


# --- OpenAPI ---------------------------------------------------------------------------


async def test_every_own_route_is_documented(gateway: Gateway) -> None:
    async with gateway(never_called) as client:
        schema = (await client.get("/openapi.json")).json()

    operations = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]
    assert {path for path, _, _ in operations} >= OWN_ROUTES
    problems: list[str] = []
    for path, method, operation in operations:
        where = f"{method.upper()} {path}"
        if not operation.get("operationId"):
            problems.append(f"{where}: no operation_id")
        summary = operation.get("summary", "")
        if not summary or "\n" in summary:
            problems.append(f"{where}: summary must be one line, got {summary!r}")
        description = operation.get("description", "")
        if not description or len(description) > 300:
            problems.append(f"{where}: description must be 1-300 characters ({len(description)})")
    assert problems == []
    ids = [operation["operationId"] for _, _, operation in operations]
    assert len(ids) == len(set(ids))


def test_no_own_route_is_hidden_from_the_schema(routes_file: Path) -> None:
    app = create_app(Settings(routes_file=routes_file), transport=httpx.MockTransport(never_called))
    documented = set(app.openapi()["paths"])
    for route in app.routes:
        if isinstance(route, APIRoute):
            assert route.include_in_schema, route.path
            assert route.path in documented


# --- the production client, through the whole app --------------------------------------


@pytest.fixture
async def real_upstream() -> AsyncIterator[TestServer]:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Path": request.raw_path})
        await response.prepare(request)
        for i in range(20):
            await response.write(f"{i}\n".encode())
            await asyncio.sleep(0)
        return response

    async def upload(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    app = web.Application()
    app.router.add_route("*", "/upload", upload)
    app.router.add_route("*", "/{tail:.*}", stream)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
def production_gateway(
    write_routes: WriteRoutes, real_upstream: TestServer
) -> Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]]:
    routes = f"""
        routes:
          - name: real
            prefix: /real
            upstream: http://127.0.0.1:{real_upstream.port}
            max_body_bytes: 50
            timeout: {{connect: 2, read: 5, total: 10}}
          - name: closed
            prefix: /closed
            upstream: http://127.0.0.1:9
            timeout: {{connect: 2, read: 5, total: 10}}
    """

    @asynccontextmanager
    async def run() -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(Settings(routes_file=write_routes(routes)))  # no transport: aiohttp
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://gw.example"
            ) as client,
        ):
            yield client

    return run


async def test_the_production_client_streams_through(
    production_gateway: Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]],
) -> None:
    async with production_gateway() as client:
        response = await client.get("/real/stream/a%20b?q=1")
    assert response.status_code == 200
    assert response.headers["x-path"] == "/stream/a%20b?q=1"
    assert response.text == "".join(f"{i}\n" for i in range(20))


async def test_the_production_client_refuses_a_streamed_body_over_the_limit(
    production_gateway: Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]],
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 20

    async with production_gateway() as client:
        small = await client.post("/real/upload", content=b"x" * 50)
        large = await client.post("/real/upload", content=body())
    assert (small.status_code, small.text) == (200, "50")
    assert large.status_code == 413
    assert large.json()["type"] == "urn:platform:problem:body-too-large"


async def test_the_production_client_reports_an_unreachable_upstream(
    production_gateway: Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]],
) -> None:
    async with production_gateway() as client:
        response = await client.get("/closed/x")
    assert response.status_code == 502
    assert response.json()["type"] == "urn:platform:problem:upstream-unreachable"
