"""Requests refused before anything reaches an upstream, and bodies that stop arriving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Scope

from gateway.hygiene import (
    BadFraming,
    BadHeader,
    BadMethod,
    BodyTimeout,
    HeadersTooLarge,
    RequestLimits,
    check_request,
    has_body,
    with_body_timeout,
)
from servicekit.problem import PROBLEM_CONTENT_TYPE

GatewayApp = Callable[..., AbstractAsyncContextManager[ASGIApp]]
RawRequest = Callable[..., Awaitable[Any]]

LIMITS = RequestLimits(max_header_count=5, max_header_bytes=100, body_timeout=0.2)


def scope(
    headers: list[tuple[bytes, bytes]], *, method: str = "GET", version: str = "1.1"
) -> Scope:
    return {"type": "http", "method": method, "http_version": version, "headers": headers}


class Upstream:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return httpx.Response(200, text="upstream ok")


# check_request, on scopes


def test_an_ordinary_request_passes() -> None:
    headers = [(b"host", b"gw"), (b"accept", b"*/*"), (b"x-tab", b"a\tb"), (b"x-8bit", b"\xe9")]
    assert check_request(scope(headers), LIMITS) is None


def test_the_header_list_is_copied_so_later_trailers_cannot_join_it() -> None:
    original = [(b"host", b"gw")]
    checked = scope(original)
    check_request(checked, LIMITS)
    original.append((b"x-auth-subject", b"admin"))  # what uvicorn does with a trailer
    assert checked["headers"] == [(b"host", b"gw")]


def test_header_count_limit() -> None:
    at_limit = [(b"x-%d" % i, b"v") for i in range(5)]
    assert check_request(scope(at_limit), LIMITS) is None
    error = check_request(scope([*at_limit, (b"x-5", b"v")]), LIMITS)
    assert isinstance(error, HeadersTooLarge)
    assert error.status == 431


def test_header_bytes_limit_counts_names_and_values() -> None:
    at_limit = [(b"x-a", b"a" * 47), (b"x-b", b"b" * 47)]  # 3 + 47 + 3 + 47 = 100
    assert check_request(scope(at_limit), LIMITS) is None
    over = [(b"x-a", b"a" * 48), (b"x-b", b"b" * 47)]
    assert isinstance(check_request(scope(over), LIMITS), HeadersTooLarge)


@pytest.mark.parametrize(
    "value", [b"a\rb", b"a\nb", b"a\r\nx-injected: 1", b"a\x00b", b"\x01", b"a\x1fb", b"\x7f"]
)
def test_control_characters_in_values_are_refused(value: bytes) -> None:
    error = check_request(scope([(b"host", b"gw"), (b"x-a", value)]), LIMITS)
    assert isinstance(error, BadHeader)
    assert error.status == 400


@pytest.mark.parametrize("name", [b"x a", b"x:a", b"x\ta", b"", b"x\x00", b"(x)", b"x/a"])
def test_names_that_are_not_tokens_are_refused(name: bytes) -> None:
    assert isinstance(check_request(scope([(b"host", b"gw"), (name, b"v")]), LIMITS), BadHeader)


@pytest.mark.parametrize("method", ["GET", "PATCH", "PURGE", "M-SEARCH", "x.y+z", "TRACE"])
def test_token_methods_pass(method: str) -> None:
    assert check_request(scope([], method=method), LIMITS) is None


@pytest.mark.parametrize("method", ["G T", "GET\r\n", "G@T", "", "G\x00", "(GET)", "GÉT"])
def test_other_methods_are_refused(method: str) -> None:
    assert isinstance(check_request(scope([], method=method), LIMITS), BadMethod)


def test_two_hosts_are_refused() -> None:
    error = check_request(scope([(b"host", b"a"), (b"host", b"b")]), LIMITS)
    assert isinstance(error, BadFraming)
    assert check_request(scope([(b"x-forwarded-host", b"a"), (b"host", b"b")]), LIMITS) is None


def test_transfer_encoding_on_http_1_0_is_refused() -> None:
    te = [(b"transfer-encoding", b"chunked")]
    assert isinstance(check_request(scope(te, version="1.0"), LIMITS), BadFraming)
    assert check_request(scope(te, version="1.1"), LIMITS) is None


def test_has_body() -> None:
    assert has_body(scope([(b"content-length", b"3")]))
    assert has_body(scope([(b"transfer-encoding", b"chunked")]))
    assert not has_body(scope([(b"host", b"gw")]))


# with_body_timeout


def receiving(*messages: Message, then_wait: bool = True) -> Callable[[], Awaitable[Message]]:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then_wait:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


async def test_a_body_that_keeps_coming_is_untouched() -> None:
    receive = with_body_timeout(
        receiving(
            {"type": "http.request", "body": b"a", "more_body": True},
            {"type": "http.request", "body": b"b", "more_body": False},
        ),
        0.1,
        total=1,
    )
    assert (await receive())["body"] == b"a"
    assert (await receive())["body"] == b"b"


async def test_a_body_that_stops_raises_body_timeout() -> None:
    receive = with_body_timeout(
        receiving({"type": "http.request", "body": b"a", "more_body": True}), 0.05, total=1
    )
    await receive()
    with pytest.raises(BodyTimeout, match=r"for 0\.05 s") as caught:
        await receive()
    assert caught.value.status == 408
    assert (b"connection", b"close") in caught.value.headers


async def test_a_body_that_trickles_is_bounded_by_the_total() -> None:
    async def trickle() -> Message:
        await asyncio.sleep(0.03)  # always within the idle timeout
        return {"type": "http.request", "body": b"x", "more_body": True}

    receive = with_body_timeout(trickle, 0.05, total=0.2)
    started = asyncio.get_running_loop().time()

    async def read_body() -> None:
        while True:
            await receive()

    with pytest.raises(BodyTimeout, match=r"longer than 0\.2 s"):
        await read_body()
    assert asyncio.get_running_loop().time() - started < 0.3


async def test_after_the_body_waiting_for_a_disconnect_is_not_timed() -> None:
    receive = with_body_timeout(
        receiving({"type": "http.request", "body": b"", "more_body": False}), 0.05, total=0.1
    )
    await receive()
    waiting = asyncio.ensure_future(receive())
    await asyncio.sleep(0.15)  # three timeouts: the watcher of a long response is still fine
    assert not waiting.done()
    waiting.cancel()


# Through the whole app


def assert_problem(exchange: Any, status: int, slug: str) -> dict[str, Any]:
    assert exchange.status == status
    assert exchange.headers[b"content-type"] == PROBLEM_CONTENT_TYPE.encode()
    assert exchange.headers[b"connection"] == b"close"
    body: dict[str, Any] = json.loads(exchange.body)
    assert body["type"] == f"urn:platform:problem:{slug}"
    assert body["request_id"] == exchange.headers[b"x-request-id"].decode()
    return body


@pytest.mark.parametrize(
    ("headers", "status", "slug"),
    [
        ([(b"x-%d" % i, b"v") for i in range(6)], 431, "headers-too-large"),
        ([(b"x-big", b"a" * 2000)], 431, "headers-too-large"),
        ([(b"x-a", b"a\r\nb")], 400, "bad-header"),
        ([(b"x a", b"v")], 400, "bad-header"),
        ([(b"host", b"other")], 400, "bad-framing"),
    ],
)
async def test_refused_requests_never_reach_the_upstream(
    gateway_app: GatewayApp,
    raw_request: RawRequest,
    headers: list[tuple[bytes, bytes]],
    status: int,
    slug: str,
) -> None:
    upstream = Upstream()
    async with gateway_app(upstream, max_header_count=6, max_header_bytes=1024) as app:
        exchange = await raw_request(app, b"/api/x", headers=headers)
    assert_problem(exchange, status, slug)
    assert upstream.calls == 0


async def test_a_bad_method_is_refused(gateway_app: GatewayApp, raw_request: RawRequest) -> None:
    upstream = Upstream()
    async with gateway_app(upstream) as app:
        exchange = await raw_request(app, b"/api/x", method="G@T")
    assert_problem(exchange, 400, "bad-method")
    assert upstream.calls == 0


async def test_own_endpoints_are_guarded_too(
    gateway_app: GatewayApp, raw_request: RawRequest
) -> None:
    async with gateway_app(Upstream(), max_header_count=3) as app:
        fine = await raw_request(app, b"/livez")
        refused = await raw_request(app, b"/livez", headers=[(b"x-%d" % i, b"v") for i in range(3)])
    assert fine.status == 200
    assert_problem(refused, 431, "headers-too-large")


async def test_the_defaults_let_an_ordinary_request_through(
    gateway_app: GatewayApp, raw_request: RawRequest
) -> None:
    upstream = Upstream()
    headers = [(b"x-%d" % i, b"v" * 100) for i in range(90)]  # 90 + host, about 9.5 KiB
    async with gateway_app(upstream) as app:
        exchange = await raw_request(app, b"/api/x", headers=headers)
    assert exchange.status == 200
    assert upstream.calls == 1


async def test_a_body_that_stops_arriving_is_408(gateway_app: GatewayApp) -> None:
    upstream = Upstream()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async with gateway_app(upstream, client_body_timeout=0.2) as app:
        request: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/x",
            "raw_path": b"/api/x",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"gw"), (b"content-length", b"10")],
            "client": ("127.0.0.1", 40000),
            "server": ("gw", 80),
        }
        receive = receiving({"type": "http.request", "body": b"12345", "more_body": True})
        await asyncio.wait_for(app(request, receive, send), 2)

    start = sent[0]
    assert start["status"] == 408
    headers = dict(start["headers"])
    assert headers[b"connection"] == b"close"
    assert b"urn:platform:problem:body-timeout" in sent[1]["body"]
    assert upstream.calls == 0
