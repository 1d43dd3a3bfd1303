"""What only the h1 client does, against raw upstreams on 127.0.0.1 that write exact bytes.

The contract both clients keep is in test_upstream_clients.py. Here each upstream is a
script over `asyncio.start_server`, so a test controls every byte and every close.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.errors import (
    BodyTooLarge,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.h1_connection import HIGH_WATER, MAX_HEAD_BYTES, MAX_HEAD_FIELDS, H1Connection
from gateway.h1_request import encode_head, split_url
from gateway.routing import Timeouts
from gateway.settings import Settings
from gateway.upstream import Body, UpstreamRequest
from gateway.upstream_h1 import H1Upstream
from servicekit.settings import SettingsError, load_settings

TIMEOUTS = Timeouts(connect=2, read=5, total=10)
WAIT = 5.0
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Raw"], Awaitable[None]]


@dataclass
class Raw:
    """A raw upstream: what it received, how many connections it saw."""

    port: int
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    scheme: str = "http"

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


Serve = Callable[..., Awaitable[Raw]]


@pytest.fixture
async def raw() -> AsyncIterator[Serve]:
    """`upstream = await raw(script)`: runs `script(reader, writer, upstream)` per connection."""
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def start(script: Script, *, ssl_context: ssl.SSLContext | None = None) -> Raw:
        upstream = Raw(port=0, scheme="https" if ssl_context else "http")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            upstream.connections += 1
            try:
                await script(reader, writer, upstream)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                tasks.discard(task)

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
        servers.append(server)
        upstream.port = server.sockets[0].getsockname()[1]
        return upstream

    yield start
    for server in servers:
        server.close()
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=WAIT)
    for server in servers:
        await server.wait_closed()
    await asyncio.sleep(0)  # let the closed writers' transports finish


@pytest.fixture
async def upstream() -> AsyncIterator[H1Upstream]:
    client = H1Upstream(max_connections=10, keepalive_seconds=15)
    yield client
    await client.aclose()


async def read_request(reader: asyncio.StreamReader, upstream: Raw) -> bytes:
    """One request head (a bodiless request, or a Content-Length body read whole)."""
    head = await reader.readuntil(b"\r\n\r\n")
    upstream.received += head
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            upstream.received += await reader.readexactly(int(line.split(b":")[1]))
    return head


def answer(*responses: bytes, then_close: bool = False) -> Script:
    """Answers each request on a connection with the next of `responses`."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        for response in responses:
            await read_request(reader, up)
            writer.write(response)
            await writer.drain()
        if not then_close:
            await reader.read()  # until the client closes

    return script


def get(
    up: Raw,
    path: str = "/",
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: Body = None,
    timeouts: Timeouts = TIMEOUTS,
) -> UpstreamRequest:
    return UpstreamRequest(method, up.url(path), headers or [], body, timeouts)


async def exchange(client: H1Upstream, request: UpstreamRequest) -> tuple[int, bytes]:
    async with client.send(request) as response:
        return response.status, b"".join([c async for c in response.iter_body()])


async def eventually(check: Callable[[], bool]) -> None:
    """Wait (bounded) until `check()` holds."""
    async with asyncio.timeout(WAIT):
        while not check():  # noqa: ASYNC110 - pool state has no event to wait on
            await asyncio.sleep(0.01)


def only_connection(client: H1Upstream) -> H1Connection:
    (conn,) = client.pool.connections
    return conn


# --- what goes on the wire -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body", "framing"),
    [
        ("GET", None, b""),
        ("DELETE", None, b""),
        ("POST", None, b"content-length: 0\r\n"),
        ("PUT", b"abc", b"content-length: 3\r\n"),
        ("GET", b"", b"content-length: 0\r\n"),
    ],
)
async def test_the_head_is_byte_exact(
    raw: Serve, upstream: H1Upstream, method: str, body: bytes | None, framing: bytes
) -> None:
    up = await raw(answer(OK))
    request = get(up, "/a%20b?x=1&y", method=method, headers=[("X-Mixed", "v")], body=body)
    assert await exchange(upstream, request) == (200, b"ok")
    expected = (
        f"{method} /a%20b?x=1&y HTTP/1.1\r\nhost: 127.0.0.1:{up.port}\r\nX-Mixed: v\r\n".encode()
        + framing
        + b"\r\n"
        + (body or b"")
    )
    assert bytes(up.received) == expected


async def test_a_streamed_body_goes_chunked_as_it_comes(raw: Serve, upstream: H1Upstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        up.received += await reader.readuntil(b"\r\n\r\n")
        up.received += await reader.readuntil(b"0\r\n\r\n")
        writer.write(OK)
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"hello"
        yield b""
        yield b"x" * 17

    up = await raw(script)
    assert await exchange(upstream, get(up, method="POST", body=body())) == (200, b"ok")
    head, _, sent = bytes(up.received).partition(b"\r\n\r\n")
    assert head.endswith(b"\r\ntransfer-encoding: chunked")
    assert sent == b"5\r\nhello\r\n11\r\n" + b"x" * 17 + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("port", "host"),
    [("", "example.org"), (":80", "example.org"), (":8080", "example.org:8080")],
)
def test_the_host_header_leaves_out_the_default_port(port: str, host: str) -> None:
    origin, target = split_url(f"http://Example.org{port}/p?q")
    assert (origin.host_header, target) == (host, "/p?q")
    https, _ = split_url(f"https://[::1]{port or ':443'}")
    assert https.host_header == ("[::1]" if not port else f"[::1]{port}")


def test_a_url_without_a_path_asks_for_the_root() -> None:
    assert split_url("http://h")[1] == "/"
    assert split_url("http://h?x=1")[1] == "/?x=1"


@pytest.mark.parametrize(
    "headers",
    [
        [("x-evil", "a\r\nx-injected: 1")],
        [("x-evil", "a\nb")],
        [("x-evil", "a\rb")],
        [("x-evil", "a\x00b")],
        [("x evil", "a")],
        [("x-evil:", "a")],
        [("", "a")],
        [("x-evil", "\u20ac")],  # not latin-1
        [("transfer-encoding", "chunked")],
        [("content-length", "5")],  # a GET without a body
    ],
)
async def test_a_bad_header_is_refused_and_nothing_is_sent(
    raw: Serve, upstream: H1Upstream, headers: list[tuple[str, str]]
) -> None:
    up = await raw(answer(OK))
    with pytest.raises(UpstreamBroken, match="refusing to send"):
        await exchange(upstream, get(up, headers=headers))
    assert up.connections == 0
    assert upstream.pool.open_count == 0


def test_a_target_with_a_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        encode_head("GET", "/a\r\nx:y", "h", [], None)
    with pytest.raises(ValueError, match="space"):
        encode_head("GET", "/a b", "h", [], None)


async def test_a_latin1_value_arrives_byte_exact(raw: Serve, upstream: H1Upstream) -> None:
    up = await raw(answer(OK))
    await exchange(upstream, get(up, headers=[("x-name", "caf\xe9 \xff")]))
    assert b"\r\nx-name: caf\xe9 \xff\r\n" in up.received


async def test_a_given_host_replaces_the_url_s(raw: Serve, upstream: H1Upstream) -> None:
    up = await raw(answer(OK))
    await exchange(upstream, get(up, headers=[("Host", "virtual.example")]))
    assert bytes(up.received).count(b"ost: ") == 1
    assert b"\r\nHost: virtual.example\r\n" in up.received


# --- what comes back -------------------------------------------------------------------


async def test_a_chunked_response_is_decoded_and_the_connection_reused(
    raw: Serve, upstream: H1Upstream
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    up = await raw(answer(chunked, OK))
    assert await exchange(upstream, get(up)) == (200, b"hello world")
    assert upstream.pool.idle_count == 1
    assert await exchange(upstream, get(up)) == (200, b"ok")
    assert up.connections == 1


async def test_a_close_delimited_body_ends_at_eof_and_is_not_reused(
    raw: Serve, upstream: H1Upstream
) -> None:
    up = await raw(answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", then_close=True))
    assert await exchange(upstream, get(up)) == (200, b"until the end")
    assert upstream.pool.open_count == 0


async def test_head_stops_after_the_head_and_reuses_the_connection(
    raw: Serve, upstream: H1Upstream
) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncontent-type: text/plain\r\n\r\n"
    up = await raw(answer(head, OK))
    async with upstream.send(get(up, method="HEAD")) as response:
        assert response.status == 200
        assert (b"content-length", b"100") in response.headers
        assert [c async for c in response.iter_body()] == []
    assert upstream.pool.idle_count == 1
    assert await exchange(upstream, get(up)) == (200, b"ok")
    assert up.connections == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_end_with_the_head(
    raw: Serve, upstream: H1Upstream, status: int
) -> None:
    # A 304 may carry the Content-Length the full response would have had.
    response = f"HTTP/1.1 {status} X\r\ncontent-length: 50\r\n\r\n".encode()
    up = await raw(answer(response, OK))
    assert await exchange(upstream, get(up)) == (status, b"")
    assert await exchange(upstream, get(up)) == (200, b"ok")
    assert up.connections == 1


async def test_interim_responses_are_skipped(raw: Serve, upstream: H1Upstream) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    up = await raw(answer(interim + b"HTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx"))
    async with upstream.send(get(up)) as response:
        assert response.status == 201
        assert [name for name, _ in response.headers] == [b"content-length"]
        assert b"".join([c async for c in response.iter_body()]) == b"x"


async def test_switching_protocols_is_refused(raw: Serve, upstream: H1Upstream) -> None:
    upgrade = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    )
    up = await raw(answer(upgrade))
    with pytest.raises(UpstreamBroken, match="upgrades are not proxied"):
        await exchange(upstream, get(up))
    assert upstream.pool.open_count == 0


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\nok",
    ],
)
async def test_a_connection_the_upstream_will_close_is_not_reused(
    raw: Serve, upstream: H1Upstream, response: bytes
) -> None:
    up = await raw(answer(response, response))
    assert await exchange(upstream, get(up)) == (200, b"ok")
    assert upstream.pool.open_count == 0
    assert await exchange(upstream, get(up)) == (200, b"ok")
    assert up.connections == 2


async def test_http_1_0_with_keep_alive_is_reused(raw: Serve, upstream: H1Upstream) -> None:
    response = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok"
    up = await raw(answer(response, response))
    await exchange(upstream, get(up))
    await exchange(upstream, get(up))
    assert up.connections == 1


@pytest.mark.parametrize(
    "response",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    ],
)
async def test_a_malformed_response_is_broken(
    raw: Serve, upstream: H1Upstream, response: bytes
) -> None:
    up = await raw(answer(response))
    with pytest.raises(UpstreamBroken):
        await exchange(upstream, get(up))
    assert upstream.pool.open_count == 0


async def test_a_head_that_never_ends_is_refused(raw: Serve, upstream: H1Upstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        await read_request(reader, up)
        writer.write(b"HTTP/1.1 200 OK\r\nx-endless: ")
        with suppress(ConnectionError):
            for _ in range(64):  # 4 MiB of one header value, unless cut off first
                writer.write(b"a" * 65536)
                await writer.drain()
        await reader.read()

    up = await raw(script)
    with pytest.raises(UpstreamBroken, match="head exceeds"):
        await exchange(upstream, get(up))
    assert upstream.pool.open_count == 0


async def test_too_many_header_fields_are_refused(raw: Serve, upstream: H1Upstream) -> None:
    fields = b"".join(b"x-f%d: v\r\n" % i for i in range(MAX_HEAD_FIELDS + 1))
    up = await raw(answer(b"HTTP/1.1 200 OK\r\n" + fields + b"content-length: 2\r\n\r\nok"))
    with pytest.raises(UpstreamBroken, match="header fields"):
        await exchange(upstream, get(up))
    assert upstream.pool.open_count == 0


async def test_a_large_head_within_the_limits_passes(raw: Serve, upstream: H1Upstream) -> None:
    value = b"v" * 1000
    count = (MAX_HEAD_BYTES - 1024) // (len(value) + 12)
    assert count < MAX_HEAD_FIELDS
    fields = b"".join(b"x-f%03d: %s\r\n" % (i, value) for i in range(count))
    body = b"b" * 300_000  # arrives with the head's end in one piece or several
    response = b"HTTP/1.1 200 OK\r\n" + fields + b"content-length: %d\r\n\r\n" % len(body)
    up = await raw(answer(response + body))
    assert await exchange(upstream, get(up)) == (200, body)


async def test_a_second_response_to_one_request_closes_the_connection(
    raw: Serve, upstream: H1Upstream
) -> None:
    up = await raw(answer(OK + OK, OK))
    assert await exchange(upstream, get(up)) == (200, b"ok")
    await eventually(lambda: upstream.pool.open_count == 0)
    assert await exchange(upstream, get(up)) == (200, b"ok")
    assert up.connections == 2


async def test_bytes_on_an_idle_connection_close_it(raw: Serve, upstream: H1Upstream) -> None:
    sent_garbage = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        await read_request(reader, up)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await writer.drain()
        sent_garbage.set()
        await reader.read()

    up = await raw(script)
    await exchange(upstream, get(up))
    assert upstream.pool.idle_count == 1
    await asyncio.wait_for(sent_garbage.wait(), WAIT)
    await eventually(lambda: upstream.pool.open_count == 0)


# --- stale keep-alive connections ------------------------------------------------------


def serve_once_then_drop() -> Script:
    """First connection: answers one request, then reads the next and closes unanswered
    (an upstream closing an idle connection just as a request was sent on it). Later
    connections answer every request."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        first = up.connections == 1
        await read_request(reader, up)
        writer.write(OK)
        await writer.drain()
        if first:
            await reader.readuntil(b"\r\n\r\n")
            return  # closed without a byte of an answer
        while True:
            await read_request(reader, up)
            writer.write(OK)
            await writer.drain()

    return script


@pytest.mark.parametrize(("method", "body"), [("GET", None), ("PUT", b"payload")])
async def test_a_stale_connection_is_retried_once_on_a_new_one(
    raw: Serve, upstream: H1Upstream, method: str, body: bytes | None
) -> None:
    up = await raw(serve_once_then_drop())
    await exchange(upstream, get(up))
    assert await exchange(upstream, get(up, method=method, body=body)) == (200, b"ok")
    assert up.connections == 2


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_non_idempotent_request_is_never_resent(
    raw: Serve, upstream: H1Upstream, method: str
) -> None:
    up = await raw(serve_once_then_drop())
    await exchange(upstream, get(up))
    with pytest.raises(UpstreamBroken, match="closed the connection"):
        await exchange(upstream, get(up, method=method, body=b"payload"))
    assert up.connections == 1


async def test_a_streamed_body_is_never_retried(raw: Serve, upstream: H1Upstream) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"once"

    up = await raw(serve_once_then_drop())
    await exchange(upstream, get(up))
    with pytest.raises(UpstreamBroken, match="closed the connection"):
        await exchange(upstream, get(up, method="PUT", body=body()))
    assert up.connections == 1


async def test_a_new_connection_that_fails_is_not_retried(raw: Serve, upstream: H1Upstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        await reader.readuntil(b"\r\n\r\n")

    up = await raw(script)
    with pytest.raises(UpstreamBroken, match="before answering"):
        await exchange(upstream, get(up))
    assert up.connections == 1


async def test_an_idle_connection_the_upstream_closed_leaves_the_pool(
    raw: Serve, upstream: H1Upstream
) -> None:
    up = await raw(answer(OK, then_close=True))
    await exchange(upstream, get(up))
    await eventually(lambda: upstream.pool.open_count == 0)
    up2 = await raw(answer(OK))
    assert await exchange(upstream, get(up2)) == (200, b"ok")


# --- the pool --------------------------------------------------------------------------


async def test_at_the_limit_a_request_waits_for_a_connection(raw: Serve) -> None:
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        while True:
            await read_request(reader, up)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(release.wait(), WAIT)
            writer.write(b"ok")
            await writer.drain()

    client = H1Upstream(max_connections=1)
    try:
        up = await raw(script)
        async with client.send(get(up)) as first:
            second = asyncio.create_task(exchange(client, get(up)))
            await asyncio.sleep(0.1)
            assert not second.done()
            assert client.pool.open_count == 1
            release.set()
            assert b"".join([c async for c in first.iter_body()]) == b"ok"
        assert await asyncio.wait_for(second, WAIT) == (200, b"ok")
        assert up.connections == 1
    finally:
        await client.aclose()


async def test_at_the_limit_the_wait_ends_with_the_connect_timeout(raw: Serve) -> None:
    client = H1Upstream(max_connections=1)
    try:
        up = await raw(answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"))
        quick = Timeouts(connect=0.2, read=5, total=10)
        async with client.send(get(up)):
            with pytest.raises(UpstreamTimeout, match="no upstream connection became free"):
                await asyncio.wait_for(exchange(client, get(up, timeouts=quick)), WAIT)
    finally:
        await client.aclose()


async def test_at_the_limit_an_idle_connection_elsewhere_makes_room(raw: Serve) -> None:
    client = H1Upstream(max_connections=1)
    try:
        one, two = await raw(answer(OK)), await raw(answer(OK))
        await exchange(client, get(one))
        assert await exchange(client, get(two)) == (200, b"ok")
        assert client.pool.open_count == 1
    finally:
        await client.aclose()


async def test_idle_connections_expire(raw: Serve) -> None:
    client = H1Upstream(keepalive_seconds=0.1)
    try:
        up = await raw(answer(OK, OK))
        await exchange(client, get(up))
        await asyncio.sleep(0.15)
        await exchange(client, get(up))  # not on the expired connection
        assert up.connections == 2
        # And nothing stays idle past its time, even without another request.
        await eventually(lambda: client.pool.open_count == 0)
    finally:
        await client.aclose()


async def test_aclose_closes_connections_in_use(raw: Serve) -> None:
    client = H1Upstream()
    up = await raw(answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"))
    async with client.send(get(up)) as response:
        await client.aclose()
        with pytest.raises(UpstreamBroken):
            await anext(response.iter_body())
    with pytest.raises(UpstreamUnreachable, match="closed"):
        await exchange(client, get(up))


# --- the request body ------------------------------------------------------------------


async def test_an_early_answer_arrives_while_the_body_is_still_sent(
    raw: Serve, upstream: H1Upstream
) -> None:
    body_closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\ncontent-length: 3\r\n\r\nbig")
        await writer.drain()
        await reader.read()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 65536
                await asyncio.sleep(0)
        finally:
            body_closed.set()

    up = await raw(script)
    request = get(up, method="POST", body=endless())
    assert await asyncio.wait_for(exchange(upstream, request), WAIT) == (413, b"big")
    await asyncio.wait_for(body_closed.wait(), WAIT)
    assert upstream.pool.open_count == 0  # the body was not all sent: closed


async def test_a_failing_body_ends_the_exchange_with_its_cause(
    raw: Serve, upstream: H1Upstream
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"x"
        raise BodyTooLarge("too much")

    up = await raw(script)
    with pytest.raises(UpstreamBroken, match="request body failed") as caught:
        await asyncio.wait_for(exchange(upstream, get(up, method="POST", body=body())), WAIT)
    assert isinstance(caught.value.__cause__, BodyTooLarge)
    assert upstream.pool.open_count == 0


@pytest.mark.parametrize(("declared", "chunks"), [("3", [b"ab", b"cd"]), ("5", [b"ab"])])
async def test_a_streamed_body_must_match_its_content_length(
    raw: Serve, upstream: H1Upstream, declared: str, chunks: list[bytes]
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        up.received += await reader.read()

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    up = await raw(script)
    request = get(up, method="POST", headers=[("content-length", declared)], body=body())
    with pytest.raises(UpstreamBroken, match="content-length"):
        await asyncio.wait_for(exchange(upstream, request), WAIT)
    await eventually(lambda: up.connections == 1)
    assert b"abc" not in up.received  # never a byte past the declared length


async def test_a_large_body_waits_for_the_upstream_to_read(
    raw: Serve, upstream: H1Upstream
) -> None:
    can_read = asyncio.Event()
    produced = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.wait_for(can_read.wait(), WAIT)
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            tail = (tail + await reader.read(65536))[-16:]
        writer.write(OK)
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(256):  # 16 MiB, far more than socket buffers hold
            produced += 65536
            yield b"x" * 65536

    up = await raw(script)
    task = asyncio.create_task(exchange(upstream, get(up, method="POST", body=body())))
    await asyncio.sleep(0.3)
    assert produced < 12 * 1024 * 1024  # held back, not all pulled into memory
    can_read.set()
    assert await asyncio.wait_for(task, WAIT) == (200, b"ok")
    assert produced == 16 * 1024 * 1024


# --- reading backpressure and timeouts -------------------------------------------------


async def test_a_large_body_read_slowly_stays_bounded_in_memory(
    raw: Serve, upstream: H1Upstream
) -> None:
    size = 8 * 1024 * 1024
    written = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        nonlocal written
        await read_request(reader, up)
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
        for _ in range(size // 65536):
            writer.write(b"y" * 65536)
            await writer.drain()
            written += 65536
        await reader.read()

    up = await raw(script)
    async with upstream.send(get(up)) as response:
        conn = only_connection(upstream)
        chunks = response.iter_body()
        got = len(await anext(chunks))
        await asyncio.sleep(0.3)  # a slow client: the upstream keeps sending meanwhile
        assert conn.reading_paused
        assert conn.buffered <= HIGH_WATER + 256 * 1024  # one socket read past the mark
        assert written < size  # the upstream is held back by TCP
        async for chunk in chunks:
            got += len(chunk)
            assert len(chunk) <= HIGH_WATER + 256 * 1024
        assert got == size
    assert upstream.pool.idle_count == 1


async def test_the_total_timeout_bounds_a_trickling_body(raw: Serve, upstream: H1Upstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        await read_request(reader, up)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"z")
            await writer.drain()
            await asyncio.sleep(0.02)

    up = await raw(script)
    quick = Timeouts(connect=0.2, read=0.2, total=0.4)
    with pytest.raises(UpstreamTimeout, match="stopped sending the body"):
        await asyncio.wait_for(exchange(upstream, get(up, timeouts=quick)), WAIT)
    assert upstream.pool.open_count == 0


# --- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_with_a_trusted_certificate(raw: Serve, certificate: tuple[Path, Path]) -> None:
    cert_file, key_file = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    up = await raw(answer(OK, OK), ssl_context=server_context)
    client = H1Upstream(ssl_context=trusting)
    try:
        assert await exchange(client, get(up)) == (200, b"ok")
        assert await exchange(client, get(up)) == (200, b"ok")
        assert up.connections == 1
        assert b"\r\nhost: 127.0.0.1:" in up.received
    finally:
        await client.aclose()


async def test_https_with_an_untrusted_certificate_is_unreachable(
    raw: Serve, upstream: H1Upstream, certificate: tuple[Path, Path]
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*certificate)
    up = await raw(answer(OK), ssl_context=server_context)
    with pytest.raises(UpstreamUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        await exchange(upstream, get(up))
    assert upstream.pool.open_count == 0


# --- settings --------------------------------------------------------------------------


def test_h1_is_the_default_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ROUTES_FILE", "routes.yaml")
    monkeypatch.delenv("GATEWAY_UPSTREAM_CLIENT", raising=False)
    assert load_settings(Settings).upstream_client == "h1"
    monkeypatch.setenv("GATEWAY_UPSTREAM_CLIENT", "aiohttp")
    assert load_settings(Settings).upstream_client == "aiohttp"


def test_an_unknown_client_stops_start_up_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ROUTES_FILE", "routes.yaml")
    monkeypatch.setenv("GATEWAY_UPSTREAM_CLIENT", "curl")
    with pytest.raises(SettingsError) as caught:
        load_settings(Settings)
    message = str(caught.value.code)
    assert message.startswith("invalid setting GATEWAY_UPSTREAM_CLIENT: ")
    assert "'h1'" in message
    assert "\n" not in message


async def test_a_shorter_read_timeout_holds_on_a_reused_connection(
    raw: Serve, upstream: H1Upstream
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Raw) -> None:
        await read_request(reader, up)
        writer.write(OK)
        await read_request(reader, up)  # and never answers the second
        await reader.read()

    up = await raw(script)
    await exchange(upstream, get(up, timeouts=Timeouts(connect=5, read=30, total=60)))
    quick = Timeouts(connect=0.2, read=0.2, total=5)
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout, match="did not answer"):
        await asyncio.wait_for(exchange(upstream, get(up, timeouts=quick)), WAIT)
    assert asyncio.get_running_loop().time() - started < 2
    assert up.connections == 1  # it was the reused connection that timed out
