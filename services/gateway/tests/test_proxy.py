"""The proxy path through the whole app, with `httpx.MockTransport` as the upstream."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from gateway.errors import BadRequest, BodyTooLarge, ClientGone
from gateway.proxy import SMALL_BODY_BYTES, RequestBody, _relay_body, body_framing
from servicekit.problem import PROBLEM_CONTENT_TYPE

Gateway = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
GatewayApp = Callable[..., AbstractAsyncContextManager[ASGIApp]]
RawRequest = Callable[..., Awaitable[Any]]
Capture = Callable[[str], list[logging.LogRecord]]


class Upstream:
    """A MockTransport handler that records what reached it and answers `response`."""

    def __init__(self, response: httpx.Response | None = None) -> None:
        self.response = response or httpx.Response(200, text="upstream ok")
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.response

    @property
    def last(self) -> httpx.Request:
        assert len(self.requests) == 1, f"the upstream was called {len(self.requests)} times"
        return self.requests[0]


def raises(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:platform:problem:{slug}"
    assert body["request_id"] == response.headers["x-request-id"]
    return body  # type: ignore[no-any-return]


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)  # let the other side run between chunks
        yield part


# --- forwarding ------------------------------------------------------------------------


async def test_forwards_method_path_query_body_and_headers(gateway: Gateway) -> None:
    upstream = Upstream(httpx.Response(201, text="created"))
    async with gateway(upstream) as client:
        response = await client.patch(
            "/api/things/a%20b?x=1&y=a%2Fb+c&x=2",
            content=b"hello",
            headers={
                "x-custom": "yes",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "x-forwarded-for": "203.0.113.9",
            },
        )

    assert (response.status_code, response.text) == (201, "created")
    sent = upstream.last
    assert sent.method == "PATCH"
    assert sent.url.scheme == "http"
    assert sent.url.host == "api.upstream"
    assert sent.url.raw_path == b"/things/a%20b?x=1&y=a%2Fb+c&x=2"
    assert sent.content == b"hello"
    assert sent.headers["host"] == "api.upstream"
    assert sent.headers["content-length"] == "5"
    assert sent.headers["x-custom"] == "yes"
    assert sent.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert sent.headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert sent.headers["x-forwarded-proto"] == "http"
    assert sent.headers["x-forwarded-host"] == "gw.example"
    assert sent.headers["x-request-id"] == response.headers["x-request-id"]


async def test_sends_only_the_clients_headers_and_its_own(gateway: Gateway) -> None:
    upstream = Upstream()
    async with gateway(upstream) as client:
        request = client.build_request("GET", "/api/x", headers={"x-only": "1"})
        for name in ("accept", "accept-encoding", "user-agent", "connection"):
            del request.headers[name]
        await client.send(request)

    # No Accept-Encoding, User-Agent, Accept or Connection invented on the way.
    assert sorted(upstream.last.headers.keys()) == [
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-only",
        "x-request-id",
    ]


async def test_a_valid_request_id_travels_both_ways(gateway: Gateway) -> None:
    upstream = Upstream(httpx.Response(200, headers={"x-request-id": "abc-123"}))
    async with gateway(upstream) as client:
        response = await client.get("/api/x", headers={"x-request-id": "abc-123"})
    assert upstream.last.headers["x-request-id"] == "abc-123"
    assert response.headers.get_list("x-request-id") == ["abc-123"]


async def test_hop_by_hop_request_headers_stop_at_the_gateway(gateway: Gateway) -> None:
    upstream = Upstream()
    async with gateway(upstream) as client:
        await client.get(
            "/api/x",
            headers={
                "connection": "keep-alive, X-Secret",
                "x-secret": "1",
                "keep-alive": "timeout=5",
                "te": "trailers",
                "upgrade": "h2c",
                "proxy-authorization": "Basic eA==",
                "x-forwarded-proto": "gopher",
                "x-forwarded-host": "evil.example",
            },
        )
    headers = upstream.last.headers
    for name in ("connection", "x-secret", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert name not in headers
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "gw.example"


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/api", "http://api.upstream/"),
        ("/api/", "http://api.upstream/"),
        ("/api/x/", "http://api.upstream/x/"),
        ("/api//x", "http://api.upstream/x"),
        ("/api/x/%2e%2e/y", "http://api.upstream/y"),
        ("/api/v2/x", "http://v2.upstream/x"),
        ("/api/v3", "http://api.upstream/v3"),
        ("/scoped", "http://scoped.upstream:8081/base/path"),
        ("/scoped/a/b", "http://scoped.upstream:8081/base/path/a/b"),
        ("/keep/x", "http://keep.upstream/keep/x"),
        ("/keep/a%3Fb", "http://keep.upstream/keep/a%3Fb"),
    ],
)
async def test_upstream_url(gateway: Gateway, path: str, url: str) -> None:
    upstream = Upstream()
    async with gateway(upstream) as client:
        response = await client.get(path)
    assert response.status_code == 200
    assert str(upstream.last.url) == url


@pytest.mark.parametrize(
    ("raw_path", "url"),
    [
        (b"/api/a/../b", "http://api.upstream/b"),
        (b"/api/./b/.", "http://api.upstream/b"),
        (b"/keep/../api/x", "http://api.upstream/x"),  # matched after normalising
        (b"/scoped/x/..", "http://scoped.upstream:8081/base/path"),
    ],
)
async def test_dot_segments_are_resolved_before_routing(
    gateway_app: GatewayApp, raw_request: RawRequest, raw_path: bytes, url: str
) -> None:
    upstream = Upstream()
    async with gateway_app(upstream) as app:
        exchange = await raw_request(app, raw_path)
    assert exchange.status == 200
    assert str(upstream.last.url) == url


# --- what comes back -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204, 302, 404, 500, 503])
async def test_the_upstream_response_passes_through(gateway: Gateway, status: int) -> None:
    body = b"" if status == 204 else b'{"from": "upstream"}'
    upstream = Upstream(
        httpx.Response(
            status,
            content=body,
            headers=[
                ("content-type", "application/vnd.upstream+json"),
                ("location", "/elsewhere"),
                ("retry-after", "7"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("server", "upstream/1.0"),
            ],
        )
    )
    async with gateway(upstream) as client:
        response = await client.get("/api/x")

    assert response.status_code == status
    assert response.content == body
    assert response.headers["content-type"] == "application/vnd.upstream+json"
    assert response.headers["location"] == "/elsewhere"
    assert response.headers["retry-after"] == "7"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["server"] == "upstream/1.0"
    assert len(response.headers.get_list("x-request-id")) == 1


async def test_content_encoding_is_left_alone(gateway: Gateway) -> None:
    compressed = gzip.compress(b"hello " * 100)
    upstream = Upstream(
        httpx.Response(200, content=compressed, headers={"content-encoding": "gzip"})
    )
    async with gateway(upstream) as client, client.stream("GET", "/api/x") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-length"] == str(len(compressed))
    assert raw == compressed


async def test_hop_by_hop_response_headers_stop_at_the_gateway(gateway: Gateway) -> None:
    upstream = Upstream(
        httpx.Response(
            200,
            content=b"ok",
            headers={
                "connection": "close, X-Hop",
                "x-hop": "1",
                "keep-alive": "timeout=5",
                "proxy-authenticate": "Basic",
                "x-end-to-end": "1",
            },
        )
    )
    async with gateway(upstream) as client:
        response = await client.get("/api/x")
    for name in ("connection", "x-hop", "keep-alive", "proxy-authenticate"):
        assert name not in response.headers
    assert response.headers["x-end-to-end"] == "1"


async def test_a_streamed_response_arrives_whole(gateway: Gateway) -> None:
    parts = [f"chunk {i}\n".encode() for i in range(20)]
    upstream = Upstream(httpx.Response(200, content=chunks_of(*parts)))
    async with gateway(upstream) as client:
        response = await client.get("/api/stream")
    assert response.content == b"".join(parts)


async def test_a_streamed_response_to_a_request_with_a_body_arrives_whole(
    gateway: Gateway,
) -> None:
    parts = [f"chunk {i}\n".encode() for i in range(20)]
    upstream = Upstream(httpx.Response(200, content=chunks_of(*parts)))
    async with gateway(upstream) as client:
        response = await client.post("/api/stream", content=b"payload")
    assert response.content == b"".join(parts)
    assert upstream.last.content == b"payload"


async def test_upstream_cookies_are_not_kept_for_later_requests(gateway: Gateway) -> None:
    upstream = Upstream(httpx.Response(200, headers={"set-cookie": "session=alice; Path=/"}))
    async with gateway(upstream) as client:
        await client.get("/api/login")
        client.cookies.clear()  # the next request is another client's
        await client.get("/api/me")
    assert "cookie" not in upstream.requests[1].headers


# --- request bodies --------------------------------------------------------------------


async def test_a_streamed_request_body_is_forwarded(gateway: Gateway) -> None:
    upstream = Upstream()
    async with gateway(upstream) as client:
        response = await client.post("/keep/upload", content=chunks_of(b"a" * 10, b"b" * 10))
    assert response.status_code == 200
    assert upstream.last.content == b"a" * 10 + b"b" * 10
    assert upstream.last.headers["transfer-encoding"] == "chunked"


async def test_a_large_body_with_a_length_is_streamed_with_that_length(gateway: Gateway) -> None:
    payload = bytes(range(256)) * (SMALL_BODY_BYTES // 256 + 10)
    upstream = Upstream()
    async with gateway(upstream) as client:
        await client.put("/keep/big", content=payload)
    assert upstream.last.headers["content-length"] == str(len(payload))
    assert upstream.last.content == payload


async def test_a_body_over_the_limit_by_content_length_is_413(gateway: Gateway) -> None:
    upstream = Upstream()
    async with gateway(upstream) as client:
        response = await client.post("/api/x", content=b"x" * 101)
    assert_problem(response, 413, "body-too-large")
    assert response.headers["connection"] == "close"
    assert upstream.requests == []


async def test_a_body_at_the_limit_is_forwarded(gateway: Gateway) -> None:
    upstream = Upstream()
    async with gateway(upstream) as client:
        response = await client.post("/api/x", content=b"x" * 100)
    assert response.status_code == 200
    assert upstream.last.content == b"x" * 100


async def test_a_streamed_body_over_the_limit_is_413(gateway: Gateway) -> None:
    upstream = Upstream()
    async with gateway(upstream) as client:
        response = await client.post("/api/x", content=chunks_of(b"x" * 60, b"x" * 60))
    assert_problem(response, 413, "body-too-large")
    assert upstream.requests == []


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"abc")],
        [(b"content-length", b"5"), (b"content-length", b"6")],
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
    ],
)
async def test_ambiguous_framing_is_400(
    gateway_app: GatewayApp, raw_request: RawRequest, headers: list[tuple[bytes, bytes]]
) -> None:
    upstream = Upstream()
    async with gateway_app(upstream) as app:
        exchange = await raw_request(app, b"/api/x", method="POST", headers=headers)
    assert exchange.status == 400
    assert exchange.headers[b"content-type"] == PROBLEM_CONTENT_TYPE.encode()
    assert b"x-request-id" in exchange.headers
    assert upstream.requests == []


# --- upstream failures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (httpx.ConnectError("connection refused"), 502, "upstream-unreachable"),
        (httpx.RemoteProtocolError("not HTTP"), 502, "upstream-broken"),
        (httpx.ReadError("reset by peer"), 502, "upstream-broken"),
        (httpx.ConnectTimeout("connect timed out"), 504, "upstream-timeout"),
        (httpx.ReadTimeout("read timed out"), 504, "upstream-timeout"),
    ],
)
async def test_upstream_failures_become_problems(
    gateway: Gateway, error: Exception, status: int, slug: str
) -> None:
    async with gateway(raises(error)) as client:
        response = await client.get("/api/x")
    assert_problem(response, status, slug)


async def test_the_total_timeout_bounds_the_wait_for_headers(gateway: Gateway) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)  # cut off by the route's 0.2 s total
        return httpx.Response(200)

    async with gateway(slow) as client:
        response = await asyncio.wait_for(client.get("/quick/x"), timeout=10)
    assert_problem(response, 504, "upstream-timeout")


async def test_an_upstream_failing_mid_body_cuts_the_response(
    gateway_app: GatewayApp, raw_request: RawRequest, capture_logger: Capture
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"first part"
        raise httpx.ReadError("reset by peer")

    logged = capture_logger("gateway.proxy")
    async with gateway_app(Upstream(httpx.Response(200, content=broken()))) as app:
        exchange = await raw_request(app, b"/api/x")
    assert exchange.status == 200
    assert exchange.body == b"first part"
    assert not exchange.complete  # truncated, not a complete-looking wrong body
    [record] = logged
    assert (record.levelno, record.getMessage()) == (logging.WARNING, "response cut short")
    assert record.route == "api"


# --- the client going away -------------------------------------------------------------


class WatchedStream:
    """An upstream body that says whether it was closed, and how far it was read."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for i in range(self.count):
                await asyncio.sleep(0)
                self.sent += 1
                yield f"{i}\n".encode()
        finally:
            self.closed = True


async def test_a_client_that_goes_away_stops_the_relay(
    gateway_app: GatewayApp, raw_request: RawRequest
) -> None:
    stream = WatchedStream(100)
    async with gateway_app(Upstream(httpx.Response(200, content=stream))) as app:
        exchange = await raw_request(app, b"/api/x", disconnect=True)
    assert exchange.status == 200
    assert not exchange.complete
    assert stream.sent < 100  # the upstream body was not read to the end


async def test_a_client_that_stays_gets_everything(
    gateway_app: GatewayApp, raw_request: RawRequest
) -> None:
    stream = WatchedStream(100)
    async with gateway_app(Upstream(httpx.Response(200, content=stream))) as app:
        exchange = await raw_request(app, b"/api/x")
    assert exchange.complete
    assert exchange.body == b"".join(f"{i}\n".encode() for i in range(100))
    assert stream.closed


async def test_a_client_gone_mid_body_is_logged_as_499(
    gateway_app: GatewayApp, raw_request: RawRequest, capture_logger: Capture
) -> None:
    access = capture_logger("access")
    upstream = Upstream()
    async with gateway_app(upstream) as app:
        exchange = await raw_request(
            app,
            b"/keep/upload",
            method="POST",
            headers=[(b"transfer-encoding", b"chunked")],
            chunks=[b"x" * 10],
            disconnect="mid-body",
        )
        metrics = (await raw_request(app, b"/metrics")).body.decode()
    assert exchange.messages == []  # nobody is left to answer
    assert upstream.requests == []
    [record] = [r for r in access if r.route == "keep"]
    assert record.status == 499  # as nginx logs it, never a 5xx
    assert 'http_server_requests_total{method="POST",route="keep",status="499"} 1.0' in metrics
    assert 'route="keep",status="500"' not in metrics


# --- the pieces ------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, count: int) -> None:
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.count = count

    async def iter_body(self) -> AsyncIterator[bytes]:
        for i in range(self.count):
            await asyncio.sleep(0)
            yield bytes([65 + i % 26])


class Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def chunks(self) -> int:
        return sum(1 for m in self.messages if m.get("more_body"))

    @property
    def complete(self) -> bool:
        return bool(self.messages) and self.messages[-1].get("more_body") is False


async def test_relay_stops_when_the_client_disconnects() -> None:
    async def gone() -> Message:
        return {"type": "http.disconnect"}

    sink = Sink()
    with pytest.raises(ClientGone):
        await _relay_body(FakeResponse(50), gone, sink, True)
    assert sink.chunks < 50
    assert not sink.complete


async def test_relay_ignores_the_end_of_the_request_body() -> None:
    # The first receive() after a bodiless request is its (empty) end, not a disconnect.
    forever = asyncio.Event()
    messages: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await forever.wait()
        return {"type": "http.disconnect"}

    sink = Sink()
    await _relay_body(FakeResponse(50), receive, sink, True)
    assert sink.chunks == 50
    assert sink.complete


async def test_relay_cancels_its_watcher_when_done() -> None:
    cancelled = asyncio.Event()

    async def waits() -> Message:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"type": "http.disconnect"}

    sink = Sink()
    await _relay_body(FakeResponse(5), waits, sink, True)
    assert sink.complete
    await asyncio.wait_for(cancelled.wait(), timeout=5)


async def test_relay_of_one_chunk_never_listens() -> None:
    async def must_not_be_called() -> Message:
        raise AssertionError("receive() was called")

    sink = Sink()
    await _relay_body(FakeResponse(1), must_not_be_called, sink, True)
    assert sink.complete
    assert sink.chunks == 1


async def test_relay_does_not_listen_while_the_request_body_is_unread() -> None:
    async def must_not_be_called() -> Message:
        raise AssertionError("receive() was called")

    sink = Sink()
    await _relay_body(FakeResponse(10), must_not_be_called, sink, False)
    assert sink.chunks == 10


@pytest.mark.parametrize(
    ("headers", "framing"),
    [
        ([], (None, False)),
        ([(b"content-length", b"0")], (0, False)),
        ([(b"content-length", b"12")], (12, False)),
        ([(b"content-length", b"12"), (b"content-length", b"12")], (12, False)),
        ([(b"transfer-encoding", b"chunked")], (None, True)),
    ],
)
def test_body_framing(headers: list[tuple[bytes, bytes]], framing: tuple[int | None, bool]) -> None:
    assert body_framing(headers) == framing


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"-1")],
        [(b"content-length", b"")],
        [(b"content-length", b"1e3")],
        [(b"content-length", b"1"), (b"content-length", b"2")],
        [(b"transfer-encoding", b"chunked"), (b"content-length", b"2")],
    ],
)
def test_ambiguous_body_framing(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequest):
        body_framing(headers)


def receiver(*messages: Message) -> Callable[[], Awaitable[Message]]:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


async def test_request_body_yields_chunks_until_the_end() -> None:
    body = RequestBody(
        receiver(
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"", "more_body": True},
            {"type": "http.request", "body": b"cd", "more_body": False},
        ),
        limit=4,
    )
    assert [chunk async for chunk in body] == [b"ab", b"cd"]
    assert body.done
    assert body.error is None


async def test_request_body_over_the_limit() -> None:
    body = RequestBody(
        receiver(
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.request", "body": b"de", "more_body": False},
        ),
        limit=4,
    )
    with pytest.raises(BodyTooLarge):
        await body.read_all()
    assert isinstance(body.error, BodyTooLarge)


async def test_request_body_when_the_client_goes_away() -> None:
    body = RequestBody(
        receiver(
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.disconnect"},
        ),
        limit=100,
    )
    with pytest.raises(ClientGone):
        await body.read_all()
    assert isinstance(body.error, ClientGone)
    assert not body.done
