"""The contract every production upstream client keeps, against a real aiohttp server.

Each test runs against both clients: `H1Upstream` (the default) and `AiohttpUpstream`
(the fallback). What only the h1 client does is tested in test_upstream_h1.py.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.errors import BodyTooLarge, UpstreamBroken, UpstreamTimeout, UpstreamUnreachable
from gateway.routing import Timeouts
from gateway.upstream import Body, UpstreamRequest
from gateway.upstream_aiohttp import AiohttpUpstream
from gateway.upstream_h1 import H1Upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[TestServer]]
Upstream = AiohttpUpstream | H1Upstream

# Generous enough for a loaded CI machine; every wait below is bounded by one of these.
TIMEOUTS = Timeouts(connect=2, read=5, total=10)
WAIT = 5.0


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`server = await serve(handler)`: a real HTTP server for `handler` on 127.0.0.1."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> TestServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture(params=["h1", "aiohttp"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    client: Upstream
    if request.param == "h1":
        client = H1Upstream(max_connections=10, keepalive_seconds=15)
    else:
        client = AiohttpUpstream(max_connections=10, keepalive_seconds=15)
    yield client
    await client.aclose()


def request(
    server: TestServer,
    path: str = "/",
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: Body = None,
    timeouts: Timeouts = TIMEOUTS,
) -> UpstreamRequest:
    return UpstreamRequest(method, str(server.make_url(path)), headers or [], body, timeouts)


def acquired(upstream: Upstream) -> int:
    """Connections currently checked out of the pool."""
    if isinstance(upstream, H1Upstream):
        return upstream.pool.open_count - upstream.pool.idle_count
    return len(upstream.connector._acquired)  # type: ignore[attr-defined]


def pooled(upstream: Upstream) -> int:
    """Idle keep-alive connections waiting in the pool."""
    if isinstance(upstream, H1Upstream):
        return upstream.pool.idle_count
    return sum(len(c) for c in upstream.connector._conns.values())  # type: ignore[attr-defined]


async def read_all(upstream: Upstream, req: UpstreamRequest) -> tuple[int, bytes]:
    async with upstream.send(req) as response:
        return response.status, b"".join([c async for c in response.iter_body()])


# --- what is sent ----------------------------------------------------------------------


async def test_sends_method_path_headers_and_body_as_given(
    serve: Serve, upstream: Upstream
) -> None:
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.Response:
        seen["method"] = request.method
        seen["raw_path"] = request.raw_path
        seen["headers"] = {name.lower(): value for name, value in request.headers.items()}
        seen["body"] = await request.read()
        return web.Response(text="ok")

    server = await serve(handler)
    status, body = await read_all(
        upstream,
        request(
            server,
            "/a%20b/c%2Fd?x=1&x=2",
            method="PUT",
            headers=[("x-custom", "1"), ("x-request-id", "rid")],
            body=b"data",
        ),
    )

    assert (status, body) == (200, b"ok")
    assert seen["method"] == "PUT"
    assert seen["raw_path"] == "/a%20b/c%2Fd?x=1&x=2"  # sent exactly as given
    assert seen["body"] == b"data"
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["x-custom"] == "1"
    assert headers["content-length"] == "4"
    # Nothing the client did not send: no Accept-Encoding, User-Agent, Content-Type, Accept.
    assert set(headers) == {"host", "x-custom", "x-request-id", "content-length"}


async def test_the_request_body_is_streamed(serve: Serve, upstream: Upstream) -> None:
    first_arrived = asyncio.Event()
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        async for chunk in request.content.iter_any():
            received.append(chunk)
            first_arrived.set()
        return web.Response(text=str(request.headers.get("Transfer-Encoding")))

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        # Only a streaming client lets the upstream see this before the body ends.
        await asyncio.wait_for(first_arrived.wait(), WAIT)
        yield b"second"

    server = await serve(handler)
    status, text = await read_all(upstream, request(server, method="POST", body=body()))
    assert (status, text) == (200, b"chunked")
    assert b"".join(received) == b"firstsecond"


async def test_a_streamed_body_keeps_its_content_length(serve: Serve, upstream: Upstream) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        framing = (
            f"{request.headers.get('Content-Length')} {request.headers.get('Transfer-Encoding')}"
        )
        return web.Response(text=f"{framing} {len(body)}")

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 6
        yield b"y" * 4

    server = await serve(handler)
    _, text = await read_all(
        upstream,
        request(server, method="POST", headers=[("content-length", "10")], body=body()),
    )
    assert text == b"10 None 10"


async def test_a_request_body_that_fails_stops_the_request(
    serve: Serve, upstream: Upstream
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="should not be seen")

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 10
        raise BodyTooLarge("too much")

    server = await serve(handler)
    # Whatever aiohttp wraps it in, the request fails; the proxy then reports the
    # body's own error (see proxy.RequestBody.error).
    with pytest.raises(Exception):  # noqa: B017, PT011
        await asyncio.wait_for(
            read_all(upstream, request(server, method="POST", body=body())), WAIT
        )
    assert acquired(upstream) == 0


# --- what comes back -------------------------------------------------------------------


async def test_the_response_body_is_streamed(serve: Serve, upstream: Upstream) -> None:
    first_read = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        # Only a streaming client lets the caller see the first part before this ends.
        await asyncio.wait_for(first_read.wait(), WAIT)
        await response.write(b"second")
        return response

    server = await serve(handler)
    async with upstream.send(request(server)) as response:
        chunks = response.iter_body()
        assert await anext(chunks) == b"first"
        first_read.set()
        assert b"".join([c async for c in chunks]) == b"second"


async def test_gzip_passes_through_undecoded(serve: Serve, upstream: Upstream) -> None:
    compressed = gzip.compress(b"hello " * 1000)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip"})

    server = await serve(handler)
    async with upstream.send(request(server, headers=[("accept-encoding", "gzip")])) as response:
        body = b"".join([c async for c in response.iter_body()])
        headers = {name.lower(): value for name, value in response.headers}
    assert body == compressed
    assert headers[b"content-encoding"] == b"gzip"
    assert headers[b"content-length"] == str(len(compressed)).encode()


@pytest.mark.parametrize("status", [201, 302, 404, 503])
async def test_any_status_is_a_response_not_an_error(
    serve: Serve, upstream: Upstream, status: int
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text="from upstream", headers={"Location": "/x"})

    server = await serve(handler)
    assert await read_all(upstream, request(server)) == (status, b"from upstream")


async def test_raw_headers_keep_repeats(serve: Serve, upstream: Upstream) -> None:
    async def handler(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    server = await serve(handler)
    async with upstream.send(request(server)) as response:
        cookies = [v for n, v in response.headers if n.lower() == b"set-cookie"]
    assert cookies == [b"a=1", b"b=2"]


# --- failures --------------------------------------------------------------------------


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_unreachable(upstream: Upstream) -> None:
    url = f"http://127.0.0.1:{unused_port()}/"
    with pytest.raises(UpstreamUnreachable) as caught:
        async with upstream.send(UpstreamRequest("GET", url, [], None, TIMEOUTS)):
            pass
    assert caught.value.status == 502


async def test_slow_headers_time_out(serve: Serve, upstream: Upstream) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), WAIT)
        return web.Response(text="too late")

    server = await serve(handler)
    quick = Timeouts(connect=0.5, read=0.2, total=0.5)
    try:
        with pytest.raises(UpstreamTimeout) as caught:
            await asyncio.wait_for(read_all(upstream, request(server, timeouts=quick)), WAIT)
    finally:
        release.set()
    assert caught.value.status == 504
    assert acquired(upstream) == 0


async def test_a_stalled_body_times_out(serve: Serve, upstream: Upstream) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"start")
        await asyncio.wait_for(release.wait(), WAIT)
        return response

    server = await serve(handler)
    quick = Timeouts(connect=1, read=0.2, total=5)
    try:
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(read_all(upstream, request(server, timeouts=quick)), WAIT)
    finally:
        release.set()


async def test_a_body_cut_short_is_broken(serve: Serve, upstream: Upstream) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"only ten b")
        assert request.transport is not None
        request.transport.close()
        return response

    server = await serve(handler)
    with pytest.raises(UpstreamBroken):
        await asyncio.wait_for(read_all(upstream, request(server)), WAIT)


# --- the pool --------------------------------------------------------------------------


async def test_a_response_read_to_the_end_returns_to_the_pool(
    serve: Serve, upstream: Upstream
) -> None:
    peers: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.Response(body=b"x" * 100_000)

    server = await serve(handler)
    for _ in range(2):
        async with upstream.send(request(server)) as response:
            assert len(b"".join([c async for c in response.iter_body()])) == 100_000
        assert acquired(upstream) == 0
        assert pooled(upstream) == 1
    assert peers[0] == peers[1]  # the second request reused the connection


async def test_an_abandoned_response_closes_its_connection(
    serve: Serve, upstream: Upstream
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await asyncio.wait_for(release.wait(), WAIT)
        await response.write(b"never read")
        return response

    server = await serve(handler)
    try:
        async with upstream.send(request(server)) as response:
            assert await anext(response.iter_body()) == b"first"
            assert acquired(upstream) == 1
        # Left half-read: closed, neither checked out nor back in the pool.
        assert acquired(upstream) == 0
        assert pooled(upstream) == 0
    finally:
        release.set()


async def test_an_error_inside_the_context_closes_the_connection(
    serve: Serve, upstream: Upstream
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await asyncio.wait_for(release.wait(), WAIT)
        return response

    async def fail_after_the_first_chunk() -> None:
        async with upstream.send(request(server)) as response:
            await anext(response.iter_body())
            raise RuntimeError("the client went away")

    server = await serve(handler)
    try:
        with pytest.raises(RuntimeError, match="the client went away"):
            await fail_after_the_first_chunk()
        assert acquired(upstream) == 0
        assert pooled(upstream) == 0
    finally:
        release.set()
