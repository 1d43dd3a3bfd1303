"""The default upstream client: HTTP/1.1 on asyncio and httptools, built for this proxy.

A general client pays per request for what a proxy never uses (per-request timeout
objects, default headers, cookies, redirects, tracing hooks); this one only frames,
writes, parses and pools. See `h1_request` (what goes on the wire), `h1_connection`
(the protocol, parsing, read backpressure, timeouts) and `h1_pool` (keep-alive).

A streamed request body is written by its own task while the response is awaited, so
an upstream that answers early (a 413 before reading the body) is heard at once. If
the body's iterable raises, the exchange ends with `UpstreamBroken` (the original
exception as its cause; the proxy reports its own `RequestBody.error` instead).

A request that fails on a reused connection before any byte of a response arrived most
likely met a connection the upstream had closed while idle; it is sent once more on a
new connection when its method is idempotent and its body can be sent twice (bytes or
none). Never a POST or PATCH: the upstream may have acted on it before closing, and
only the caller's retry policy may decide to send those twice.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import suppress
from types import TracebackType

from gateway.errors import UpstreamBroken, reason
from gateway.h1_connection import H1Connection
from gateway.h1_pool import H1Pool
from gateway.h1_request import encode_head, split_url
from gateway.upstream import UpstreamRequest

# A body up to this size goes out in the same write as the head.
_JOIN_BELOW = 64 * 1024
# RFC 9110 section 9.2.2: methods whose repetition has the effect of one request.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class H1Response:
    """The response of one exchange; its body is read through `iter_body`."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: H1Connection) -> None:
        self._conn: H1Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers

    def iter_body(self) -> AsyncIterator[bytes]:
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise UpstreamBroken("the response was read after its exchange ended")
        while True:
            if conn.has_data:
                return conn.take()
            if conn.done:
                raise StopAsyncIteration
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    def detach(self) -> None:
        self._conn = None


class H1Exchange:
    """`async with client.send(request) as response`: one request, one response."""

    __slots__ = ("_conn", "_pool", "_request", "_response", "_sender")

    def __init__(self, pool: H1Pool, request: UpstreamRequest) -> None:
        self._pool = pool
        self._request = request
        self._conn: H1Connection | None = None
        self._response: H1Response | None = None
        self._sender: asyncio.Task[None] | None = None

    async def __aenter__(self) -> H1Response:
        request = self._request
        body = request.body
        try:
            origin, target = split_url(request.url)
            head, declared = encode_head(
                request.method, target, origin.host_header, request.headers, body
            )
        except ValueError as exc:
            raise UpstreamBroken(f"refusing to send the request: {reason(exc)}") from None
        if isinstance(body, bytes) and body and len(body) <= _JOIN_BELOW:
            head, body = head + body, None
        streamed = body is not None and not isinstance(body, bytes)
        timeouts = request.timeouts
        pool = self._pool
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total
        may_retry = not streamed and request.method in _IDEMPOTENT
        while True:
            conn = pool.checkout(origin)
            if conn is None:
                connect_by = min(loop.time() + timeouts.connect, deadline)
                conn = await pool.connect(origin, connect_by)
            reused = conn.used
            conn.begin(
                head_only=request.method == "HEAD", read_timeout=timeouts.read, deadline=deadline
            )
            try:
                conn.write(head)
                if isinstance(body, bytes):
                    conn.write(body)
                elif body is not None:
                    conn.body_sent = False
                    self._sender = loop.create_task(_send_body(conn, body, declared))
                while not conn.head_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait()
            except UpstreamBroken:
                self._abandon(conn)
                if may_retry and reused and not conn.got_bytes:
                    may_retry = False  # a keep-alive connection the upstream had closed
                    continue
                raise
            except BaseException:
                self._abandon(conn)
                raise
            self._conn = conn
            self._response = response = H1Response(conn)
            return response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        assert self._response is not None
        self._response.detach()
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()
        conn.finish()
        if exc_type is None and conn.reusable:
            self._pool.release(conn)
        else:
            conn.close()

    def _abandon(self, conn: H1Connection) -> None:
        sender = self._sender
        if sender is not None:
            self._sender = None
            if not sender.done():
                sender.cancel()
        conn.finish()
        conn.close()


async def _send_body(conn: H1Connection, body: AsyncIterable[bytes], length: int | None) -> None:
    """Write a streamed body; if its iterable fails, so does the exchange."""
    chunks = aiter(body)
    try:
        await _write_body(conn, chunks, length)
    except Exception as exc:
        error = UpstreamBroken(f"the request body failed: {reason(exc)}")
        error.__cause__ = exc
        conn.fail(error)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:  # an abandoned generator, suspended at a yield
            with suppress(Exception):
                await close()


async def _write_body(conn: H1Connection, chunks: AsyncIterator[bytes], length: int | None) -> None:
    """Chunked, or exactly `length` bytes when the caller declared a Content-Length."""
    sent = 0
    async for chunk in chunks:
        if conn.closed:
            return
        if not chunk:
            continue
        sent += len(chunk)
        if length is None:
            conn.write(b"".join((b"%x\r\n" % len(chunk), chunk, b"\r\n")))
        elif sent > length:
            raise ValueError(f"the body is longer than its content-length {length}")
        else:
            conn.write(chunk)
        if conn.write_paused:
            await conn.drain()
    if length is None:
        conn.write(b"0\r\n\r\n")
    elif sent != length:
        raise ValueError(f"the body is shorter than its content-length {length}")
    conn.body_sent = not conn.closed


class H1Upstream:
    """Pooled HTTP/1.1 connections to upstreams, http:// and https://."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        keepalive_seconds: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` defaults to `ssl.create_default_context()` (made on first use)."""
        self.pool = H1Pool(
            max_connections=max_connections,
            keepalive_seconds=keepalive_seconds,
            ssl_context=ssl_context,
        )

    def send(self, request: UpstreamRequest) -> H1Exchange:
        return H1Exchange(self.pool, request)

    async def aclose(self) -> None:
        await self.pool.aclose()
