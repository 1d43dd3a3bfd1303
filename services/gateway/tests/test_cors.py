"""CORS policies: what the route file may say, and what the gateway answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import Message, Scope

from gateway.app import create_app
from gateway.cors import Cors, CorsPolicy
from gateway.dispatcher import ProxyDispatcher
from gateway.settings import Settings
from servicekit.problem import PROBLEM_CONTENT_TYPE

APP = "https://app.example.com"


def policy(**fields: Any) -> CorsPolicy:
    return CorsPolicy.model_validate({"allow_origins": [APP], **fields})


# The policy as written


def test_origins_are_kept_as_browsers_send_them() -> None:
    written = CorsPolicy(
        allow_origins=(
            "HTTPS://App.Example.com:443",
            "http://localhost:3000",
            "http://[::1]:8080",
            "http://a.example:80",
        )
    )
    assert written.allow_origins == (
        "https://app.example.com",
        "http://localhost:3000",
        "http://[::1]:8080",
        "http://a.example",
    )


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "app.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "https://user@app.example.com",
        "ftp://app.example.com",
        "https://*.example.com",
        "https://bücher.example",
        "https://app.example.com:99999",
    ],
)
def test_anything_but_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValidationError):
        CorsPolicy(allow_origins=(origin,))


def test_a_wildcard_origin_stands_alone() -> None:
    assert CorsPolicy(allow_origins=("*",)).allow_origins == ("*",)
    with pytest.raises(ValidationError, match="only origin"):
        CorsPolicy(allow_origins=("*", APP))


@pytest.mark.parametrize(
    "fields",
    [
        {"allow_origins": ["*"]},
        {"allow_methods": ["*"]},
        {"allow_headers": ["*"]},
        {"expose_headers": ["*"]},
    ],
)
def test_wildcards_and_credentials_do_not_mix(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="allow_credentials"):
        policy(allow_credentials=True, **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"allow_origins": []},
        {"allow_methods": ["GET POST"]},
        {"allow_headers": ["x:y"]},
        {"max_age": -1},
        {"max_age": 86401},
        {"allow_origin": [APP]},  # a typo must not silently mean "no policy"
    ],
)
def test_other_mistakes_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CorsPolicy.model_validate({"allow_origins": [APP], **fields})


def test_header_names_are_lower_cased() -> None:
    written = policy(allow_headers=["Authorization"], expose_headers=["X-Request-ID"])
    assert written.allow_headers == ("authorization",)
    assert written.expose_headers == ("x-request-id",)


# What the gateway answers, on raw ASGI


def request(method: str = "GET", **headers: str) -> Scope:
    return {
        "type": "http",
        "method": method,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


async def preflight(cors: Cors, **headers: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = request("OPTIONS", **headers)
    assert Cors.is_preflight(scope)
    await cors.answer_preflight(scope, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


async def respond_through(
    cors: Cors, scope: Scope, upstream_headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    wrapped = cors.wrap(scope, send)
    await wrapped({"type": "http.response.start", "status": 200, "headers": upstream_headers})
    await wrapped({"type": "http.response.body", "body": b"x"})
    assert sent[1] == {"type": "http.response.body", "body": b"x"}
    return list(sent[0]["headers"])


FULL = policy(
    allow_methods=["GET", "PUT", "DELETE"],
    allow_headers=["authorization", "content-type"],
    expose_headers=["x-request-id"],
    allow_credentials=True,
    max_age=300,
)


async def test_an_allowed_preflight_is_204_with_the_policy() -> None:
    status, headers, body = await preflight(
        Cors(FULL),
        origin=APP,
        access_control_request_method="PUT",
        access_control_request_headers="Authorization, content-type",
    )
    assert status == 204
    assert body == b""
    assert headers[b"access-control-allow-origin"] == APP.encode()
    assert headers[b"access-control-allow-methods"] == b"GET, PUT, DELETE"
    assert headers[b"access-control-allow-headers"] == b"authorization, content-type"
    assert headers[b"access-control-allow-credentials"] == b"true"
    assert headers[b"access-control-max-age"] == b"300"
    assert b"origin" in headers[b"vary"]
    assert b"access-control-request-headers" in headers[b"vary"]


async def test_safelisted_methods_pass_a_preflight_unlisted() -> None:
    status, _, _ = await preflight(
        Cors(policy(allow_methods=["PUT"], allow_headers=["x-custom"])),
        origin=APP,
        access_control_request_method="POST",
        access_control_request_headers="x-custom",
    )
    assert status == 204


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"origin": "https://evil.example", "access_control_request_method": "GET"}, "origin"),
        ({"origin": APP, "access_control_request_method": "PATCH"}, "PATCH"),
        (
            {
                "origin": APP,
                "access_control_request_method": "PUT",
                "access_control_request_headers": "authorization, x-admin",
            },
            "x-admin",
        ),
    ],
)
async def test_a_refused_preflight_is_403_problem(headers: dict[str, str], why: str) -> None:
    status, sent, body = await preflight(Cors(FULL), **headers)
    assert status == 403
    assert sent[b"content-type"] == PROBLEM_CONTENT_TYPE.encode()
    assert b"access-control-allow-origin" not in sent
    problem = json.loads(body)
    assert problem["type"] == "urn:platform:problem:cors-denied"
    assert why in problem["detail"]


async def test_wildcards_answer_whatever_was_asked() -> None:
    status, headers, _ = await preflight(
        Cors(CorsPolicy(allow_origins=("*",), allow_methods=("*",), allow_headers=("*",))),
        origin="https://anyone.example",
        access_control_request_method="PATCH",
        access_control_request_headers="x-one, x-two",
    )
    assert status == 204
    assert headers[b"access-control-allow-origin"] == b"*"
    assert headers[b"access-control-allow-methods"] == b"PATCH"
    assert headers[b"access-control-allow-headers"] == b"x-one, x-two"
    assert b"access-control-allow-credentials" not in headers


def test_only_options_with_a_requested_method_is_a_preflight() -> None:
    assert not Cors.is_preflight(request("OPTIONS", origin=APP))
    assert not Cors.is_preflight(request("GET", origin=APP, access_control_request_method="GET"))
    assert not Cors.is_preflight(request("OPTIONS", access_control_request_method="GET"))


async def test_an_allowed_origin_gets_the_policy_and_not_the_upstream_s() -> None:
    upstream = [
        (b"content-type", b"text/plain"),
        (b"access-control-allow-origin", b"*"),  # an upstream that allows everyone
        (b"Access-Control-Allow-Credentials", b"true"),
    ]
    headers = await respond_through(Cors(FULL), request(origin=APP), upstream)
    assert headers == [
        (b"content-type", b"text/plain"),
        (b"access-control-allow-origin", APP.encode()),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"x-request-id"),
        (b"vary", b"origin"),
    ]


async def test_another_origin_gets_no_cors_headers_at_all() -> None:
    upstream = [(b"access-control-allow-origin", b"https://evil.example")]
    headers = await respond_through(Cors(FULL), request(origin="https://evil.example"), upstream)
    assert headers == [(b"vary", b"origin")]


async def test_a_request_without_origin_still_varies_on_it() -> None:
    # A shared cache must not hand this response to a page of another origin.
    assert await respond_through(Cors(FULL), request(), []) == [(b"vary", b"origin")]


async def test_a_public_policy_is_the_same_for_everyone() -> None:
    public = Cors(CorsPolicy(allow_origins=("*",)))
    for scope in (request(origin="https://anyone.example"), request()):
        headers = await respond_through(public, scope, [])
        if dict(scope["headers"]).get(b"origin"):
            assert headers == [(b"access-control-allow-origin", b"*")]
        else:
            assert headers == []


# Through the whole gateway

ROUTES = """
routes:
  - {name: api, prefix: /api, upstream: "http://api.upstream"}
  - {name: plain, prefix: /plain, upstream: "http://plain.upstream"}
"""


def dispatcher_of(app: FastAPI) -> ProxyDispatcher:
    """The app's ProxyDispatcher, found by walking its middleware stack."""
    node: Any = app.middleware_stack
    while not isinstance(node, ProxyDispatcher):
        node = node.app
    return node


@asynccontextmanager
async def cors_gateway(
    write_routes: Callable[[str], Path], handler: Callable[[httpx.Request], httpx.Response]
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        Settings(routes_file=write_routes(ROUTES)), transport=httpx.MockTransport(handler)
    )
    async with LifespanManager(app) as manager:
        # Until the route file carries `cors:` (see the module docstring of gateway.cors).
        dispatcher_of(app).cors = {"api": Cors(FULL)}
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


async def test_preflights_are_answered_by_the_gateway(
    write_routes: Callable[[str], Path],
) -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    ask = {"origin": APP, "access-control-request-method": "PUT"}
    async with cors_gateway(write_routes, upstream) as client:
        answered = await client.options("/api/items", headers=ask)
        forwarded = await client.options("/plain/items", headers=ask)
    assert answered.status_code == 204
    assert answered.headers["access-control-allow-origin"] == APP
    assert answered.headers["x-request-id"]
    assert forwarded.status_code == 200  # no policy on that route: the upstream's business
    assert [r.url.host for r in seen] == ["plain.upstream"]


async def test_responses_and_gateway_errors_carry_the_policy(
    write_routes: Callable[[str], Path],
) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, headers={"access-control-allow-origin": "*"})

    async with cors_gateway(write_routes, upstream) as client:
        ok = await client.get("/api/items", headers={"origin": APP})
        failed = await client.get("/api/down", headers={"origin": APP})
        plain = await client.get("/plain/items", headers={"origin": APP})
    assert ok.headers.get_list("access-control-allow-origin") == [APP]
    assert ok.headers["vary"] == "origin"
    assert failed.status_code == 502
    assert failed.headers["access-control-allow-origin"] == APP  # the page can read the error
    assert plain.headers["access-control-allow-origin"] == "*"  # untouched without a policy
