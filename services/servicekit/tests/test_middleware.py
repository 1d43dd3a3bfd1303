from __future__ import annotations

import logging
import re
from collections.abc import Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from servicekit.context import current_request_id
from servicekit.middleware import (
    ROUTE_SCOPE_KEY,
    STATUS_SCOPE_KEY,
    AccessLogMiddleware,
    RequestIdMiddleware,
)

ClientFactory = Callable[..., httpx.AsyncClient]
Capture = Callable[[str], list[logging.LogRecord]]
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


async def echo_request_id(request: Request) -> Response:
    return PlainTextResponse(current_request_id() or "")


async def sets_its_own_id(request: Request) -> Response:
    return PlainTextResponse("x", headers={"X-Request-ID": "from-the-app"})


async def item(request: Request) -> Response:
    return PlainTextResponse(f"item {request.path_params['id']}", status_code=201)


async def probe(request: Request) -> Response:
    return PlainTextResponse("ok")


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


def request_id_app() -> Starlette:
    return Starlette(
        routes=[Route("/", echo_request_id), Route("/own", sets_its_own_id)],
        middleware=[Middleware(RequestIdMiddleware)],
    )


def access_log_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{id}", item, methods=["GET", "POST"]),
            Route("/livez", probe),
            Route("/metrics", probe),
            Route("/boom", boom),
        ],
        middleware=[Middleware(AccessLogMiddleware)],
    )


# --- RequestIdMiddleware ---------------------------------------------------------------


@pytest.mark.parametrize("incoming", ["abc-123", "a" * 128, "svc:1/2@x=y+z.w_v"])
async def test_a_valid_incoming_id_is_kept(asgi_client: ClientFactory, incoming: str) -> None:
    async with asgi_client(request_id_app()) as client:
        response = await client.get("/", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming
    assert response.text == incoming  # and the app saw the same id


@pytest.mark.parametrize(
    "incoming",
    [b"a" * 129, b"has space", b"<script>", b"semi;colon", b"", b"caf\xc3\xa9"],
)
async def test_an_invalid_incoming_id_is_replaced(
    asgi_client: ClientFactory, incoming: bytes
) -> None:
    async with asgi_client(request_id_app()) as client:
        response = await client.get("/", headers=[(b"X-Request-ID", incoming)])
    made = response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(made)
    assert response.text == made


async def test_an_id_is_made_when_there_is_none(asgi_client: ClientFactory) -> None:
    async with asgi_client(request_id_app()) as client:
        first = await client.get("/")
        second = await client.get("/")
    assert GENERATED_ID.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert first.text == first.headers["x-request-id"]


async def test_the_header_appears_once_when_the_app_set_it(asgi_client: ClientFactory) -> None:
    async with asgi_client(request_id_app()) as client:
        response = await client.get("/own", headers={"X-Request-ID": "from-the-client"})
    assert response.headers.get_list("x-request-id") == ["from-the-app"]


async def test_non_http_scopes_pass_through() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await RequestIdMiddleware(app)(scope, receive, send)
    await AccessLogMiddleware(app)(scope, receive, send)
    assert seen == [scope, scope]


# --- AccessLogMiddleware ---------------------------------------------------------------


async def test_one_record_per_request_with_the_route_template(
    asgi_client: ClientFactory, capture_logger: Capture
) -> None:
    access = capture_logger("access")
    async with asgi_client(access_log_app()) as client:
        response = await client.post("/items/42")
    assert response.status_code == 201

    [record] = access
    assert record.levelno == logging.INFO
    assert record.getMessage() == "request"
    assert record.method == "POST"
    assert record.route == "/items/{id}"  # never the raw path
    assert record.status == 201
    assert isinstance(record.duration_ms, float)
    assert record.duration_ms >= 0
    assert record.client == "127.0.0.1"


async def test_unmatched_paths_get_a_fixed_label(
    asgi_client: ClientFactory, capture_logger: Capture
) -> None:
    access = capture_logger("access")
    async with asgi_client(access_log_app()) as client:
        response = await client.get("/no/such/path/123")
    assert response.status_code == 404
    [record] = access
    assert (record.route, record.status) == ("unmatched", 404)


async def test_a_label_set_by_the_handler_wins(
    capture_logger: Capture, asgi_client: ClientFactory
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_SCOPE_KEY] = "mock"
        await PlainTextResponse("proxied", status_code=503)(scope, receive, send)

    access = capture_logger("access")
    async with asgi_client(AccessLogMiddleware(app)) as client:
        await client.get("/mock/anything/7")
    [record] = access
    assert (record.route, record.status) == ("mock", 503)


@pytest.mark.parametrize("path", ["/livez", "/metrics"])
async def test_probes_are_logged_at_debug(
    asgi_client: ClientFactory, capture_logger: Capture, path: str
) -> None:
    access = capture_logger("access")
    async with asgi_client(access_log_app()) as client:
        await client.get(path)
    [record] = access
    assert record.levelno == logging.DEBUG
    assert record.route == path


async def test_probes_are_silent_at_info(
    asgi_client: ClientFactory, capture_logger: Capture
) -> None:
    access = capture_logger("access")
    logging.getLogger("access").setLevel(logging.INFO)
    async with asgi_client(access_log_app()) as client:
        await client.get("/livez")
        await client.get("/items/1")
    assert [r.route for r in access] == ["/items/{id}"]


async def test_an_app_that_raises_is_logged_as_500(
    asgi_client: ClientFactory, capture_logger: Capture
) -> None:
    access = capture_logger("access")
    async with asgi_client(access_log_app(), raise_app_exceptions=False) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    [record] = access
    assert (record.route, record.status) == ("/boom", 500)


async def test_a_request_left_unanswered_on_purpose_keeps_its_status(
    asgi_client: ClientFactory, capture_logger: Capture
) -> None:
    async def client_went_away(scope: Scope, receive: Receive, send: Send) -> None:
        scope[STATUS_SCOPE_KEY] = 499  # nothing is sent: there is nobody to send it to

    access = capture_logger("access")
    middleware = AccessLogMiddleware(client_went_away)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    await middleware(scope, receive, send)
    assert sent == []
    [record] = access
    assert record.status == 499


async def test_an_injected_logger_is_used(
    asgi_client: ClientFactory, capture_logger: Capture
) -> None:
    default = capture_logger("access")
    mine = capture_logger("demo.access")
    app = AccessLogMiddleware(PlainTextResponse("hi"), logger=logging.getLogger("demo.access"))
    async with asgi_client(app) as client:
        await client.get("/")
    assert len(mine) == 1
    assert default == []
