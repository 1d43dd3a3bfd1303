"""Which requests the proxy takes, which FastAPI gets, and what the access log calls them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from servicekit.problem import PROBLEM_CONTENT_TYPE

Gateway = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
GatewayApp = Callable[..., AbstractAsyncContextManager[ASGIApp]]
RawRequest = Callable[..., Awaitable[Any]]
Capture = Callable[[str], list[logging.LogRecord]]

# A route whose prefix is also an own path: the own path must still win.
OVERLAPPING = """
routes:
  - {name: health-upstream, prefix: /health, upstream: "http://health.upstream"}
  - {name: api, prefix: /api, upstream: "http://api.upstream"}
"""


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text=f"upstream {request.url.path}")


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/%2e%2e/%2e%2e/etc/passwd",
        b"/api/../../etc/passwd",
        b"/api/a%2fb",
        b"/api/a%5cb",
        b"/api/%00",
        b"/api/%zz",
        b"/api/..;/x",
    ],
)
async def test_a_bad_path_is_400_problem(
    gateway_app: GatewayApp, raw_request: RawRequest, raw_path: bytes
) -> None:
    async with gateway_app(ok) as app:
        exchange = await raw_request(app, raw_path)
    assert exchange.status == 400
    assert exchange.headers[b"content-type"] == PROBLEM_CONTENT_TYPE.encode()
    assert exchange.headers[b"x-request-id"]
    assert b"urn:platform:problem:bad-path" in exchange.body


async def test_own_paths_win_over_a_route(gateway: Gateway) -> None:
    async with gateway(ok, routes=OVERLAPPING) as client:
        own = await client.get("/health")
        routed = await client.get("/health/deep")
    assert own.json() == {"status": "ok"}
    assert routed.text == "upstream /deep"


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/health", "/metrics", "/openapi.json", "/"])
async def test_a_catch_all_route_leaves_the_own_paths_alone(gateway: Gateway, path: str) -> None:
    catch_all = 'routes: [{name: all, prefix: /, upstream: "http://all.upstream"}]'
    async with gateway(ok, routes=catch_all) as client:
        own = await client.get(path)
        routed = await client.get(path.rstrip("/") + "/below")
    assert not own.text.startswith("upstream")
    assert routed.text.startswith("upstream /")


async def test_paths_no_route_takes_go_to_fastapi(gateway: Gateway) -> None:
    async with gateway(ok, routes=OVERLAPPING) as client:
        response = await client.get("/apix")  # not under /api: segment boundary
    assert response.status_code == 404
    assert response.json()["type"] == "urn:platform:problem:no-route"


async def test_the_access_log_names_the_route_never_the_path(
    gateway: Gateway, capture_logger: Capture
) -> None:
    access = capture_logger("access")
    async with gateway(ok, routes=OVERLAPPING) as client:
        await client.get("/api/users/12345")
        await client.get("/nowhere/12345")
        await client.get("/")
    assert [(r.route, r.status) for r in access] == [
        ("api", 200),
        ("unmatched", 404),
        ("/", 200),
    ]
    assert all("12345" not in r.route for r in access)


async def test_every_kind_of_response_has_one_request_id(
    gateway_app: GatewayApp, raw_request: RawRequest
) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, headers={"x-request-id": "from-upstream"})

    async with gateway_app(upstream, routes=OVERLAPPING) as app:
        exchanges = [
            await raw_request(app, b"/api/x"),  # proxied, upstream set one
            await raw_request(app, b"/api/down"),  # 502
            await raw_request(app, b"/api/%2f"),  # 400
            await raw_request(app, b"/nowhere"),  # 404
            await raw_request(app, b"/livez"),  # own
        ]
    for exchange in exchanges:
        ids = [v for n, v in exchange.messages[0]["headers"] if n.lower() == b"x-request-id"]
        assert len(ids) == 1, exchange.messages[0]
