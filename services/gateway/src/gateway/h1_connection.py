"""One HTTP/1.1 connection to an upstream: an asyncio.Protocol around httptools' parser.

The protocol does the least the proxy needs and nothing else: it writes what it is
given, parses one response per exchange with a fresh `HttpResponseParser`, and buffers
the body undecoded until the caller takes it. Above `HIGH_WATER` buffered bytes it stops
reading from the socket, so a slow client of the gateway holds back the upstream through
TCP instead of filling the worker's memory.

Timeouts cost one timer per connection, not one per wait or exchange: every wait for
upstream bytes moves a deadline forward, and the timer, when it fires before the
deadline that now holds, re-arms itself for it (or, with nothing waiting, lapses until
the next wait).

Whether the connection may carry another exchange is decided here (`reusable`): the
whole response arrived, the request body was all sent, the upstream kept it alive, and
no byte arrived that belongs to no response. Any failure closes the connection at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpResponseParser

from gateway.errors import UpstreamBroken, UpstreamError, UpstreamTimeout, reason

if TYPE_CHECKING:
    from gateway.h1_request import Origin

# Body bytes held for the caller before the socket is no longer read.
HIGH_WATER = 256 * 1024
# A response head larger than this, or with more fields, is refused (nginx's defaults
# for proxied response heads are smaller): an upstream that never ends its head must
# not grow the worker's memory.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEAD_FIELDS = 256
# A timer that fires this much before its deadline counts as on time (loop resolution).
_EARLY = 0.001


class H1Connection(asyncio.Protocol):
    """A connection and the state of the one exchange it carries at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        # Called once when the connection is gone, whoever closed it (see H1Pool).
        self.on_gone: Callable[[H1Connection], None] | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = loop.create_future()
        self.used = False  # has carried an exchange before the current one
        self.pooled = False
        self.idle_since = 0.0
        # The current exchange.
        self._parser: HttpResponseParser | None = None
        self._head_only = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.head_done = False
        self.done = False
        self.error: UpstreamError | None = None
        self.got_bytes = False
        self._head_bytes = 0
        self.keep_alive = False
        self.body_sent = True
        self._stray = False  # bytes that belong to no response: never reuse
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wait_deadline = 0.0
        self._read_timeout = 0.0
        self._deadline = 0.0
        # The request body's side.
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # --- one exchange -------------------------------------------------------------------

    def begin(self, *, head_only: bool, read_timeout: float, deadline: float) -> None:
        """Expect a response: `read_timeout` per wait for bytes, `deadline` for it all."""
        self._parser = HttpResponseParser(self)
        self._head_only = head_only
        self.status = 0
        self.headers = []
        self._head_bytes = 0
        self.head_done = self.done = self.got_bytes = self.keep_alive = False
        self.body_sent = True
        self._read_timeout = read_timeout
        self._deadline = deadline

    def write(self, data: bytes) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(data)

    async def drain(self) -> None:
        """Returns once the transport takes writes again (or the connection is gone)."""
        while self.write_paused and not self.closed:
            self._drain = self.loop.create_future()
            await self._drain

    def wait(self) -> asyncio.Future[None]:
        """A future that resolves on the next progress, failure or timeout (see `error`)."""
        loop = self.loop
        deadline = min(loop.time() + self._read_timeout, self._deadline)
        self._wait_deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            # None armed, or one left by an earlier exchange with longer timeouts.
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)
        waiter = self._waiter = loop.create_future()
        return waiter

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet taken."""
        return self._buffered

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    @property
    def has_data(self) -> bool:
        return bool(self._chunks)

    def take(self) -> bytes:
        """Everything buffered so far, as one piece."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._reading_paused:
            self._resume_reading()
        return data

    def fail(self, error: UpstreamError) -> None:
        """End the exchange with `error`; the connection closes."""
        if self.error is None:
            self.error = error
        self.close()

    def finish(self) -> None:
        """The exchange is over, whichever way: drop its parser and buffer.

        The timer stays: it finds nothing to time out, or the next exchange's wait, whose
        deadline is later. A connection in steady use so arms about one timer per read
        timeout instead of one per exchange.
        """
        self._parser = None
        self._waiter = None
        self._chunks = []
        self._buffered = 0
        self.used = True
        if self._reading_paused:
            self._resume_reading()

    @property
    def reusable(self) -> bool:
        return (
            self.done
            and self.keep_alive
            and self.body_sent
            and not self.closed
            and not self._stray
            and self.error is None
        )

    def close(self) -> None:
        """Close at once, dropping unsent bytes; a response in progress fails."""
        if self.closed:
            return
        self.closed = True
        if self._parser is not None and not self.done and self.error is None:
            self.error = UpstreamBroken("the upstream connection was closed mid-exchange")
        self._parser = None
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()
        self._wake()
        self._wake_drain()
        self._gone()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Nothing was asked: an idle connection, or bytes after the response.
            self._stray = True
            self.close()
            return
        self.got_bytes = True
        if not self.head_done:
            # Everything fed before this piece was head (it has not ended yet).
            if self._head_bytes > MAX_HEAD_BYTES:
                self.fail(
                    UpstreamBroken(f"the upstream's response head exceeds {MAX_HEAD_BYTES} bytes")
                )
                return
            self._head_bytes += len(data)
        try:
            parser.feed_data(data)
        except HttpParserError as exc:
            if self.done:
                self._stray = True  # garbage after a complete response
            else:
                cause = exc.__context__
                self.fail(
                    cause
                    if isinstance(cause, UpstreamError)
                    else UpstreamBroken(f"the upstream sent a malformed response: {reason(exc)}")
                )
        if self.done:
            self._parser = None  # later bytes belong to no response

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.closed:
            return
        self.closed = True
        if self._parser is not None and not self.done:
            if self.head_done and exc is None and not _framed(self.headers):
                self.done = True  # a body delimited by the end of the connection
            elif self.error is None:
                when = "mid-response" if self.got_bytes else "before answering"
                self.error = UpstreamBroken(f"the upstream closed the connection {when}")
        self._parser = None
        self._stop_timer()
        self._wake()
        self._wake_drain()
        self._gone()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            self._stray = True  # a second response to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= MAX_HEAD_FIELDS:
            raise UpstreamBroken(
                f"the upstream's response has over {MAX_HEAD_FIELDS} header fields"
            )
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamBroken("the upstream switched protocols; upgrades are not proxied")
            self.headers = []  # an interim response (100 Continue, 103): the real one follows
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True
        if self._head_only:
            self.done = True  # a response to HEAD ends with its head, whatever it declares
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.done:
            self._stray = True  # a body for HEAD
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and not self.closed:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done and not self.done:
            self.done = True
            self._wake()

    # --- internals ----------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # the next wait arms a new timer
        if self._wait_deadline - self.loop.time() > _EARLY:
            self._timer = self.loop.call_at(self._wait_deadline, self._on_timer)
            return
        what = "stopped sending the body" if self.head_done else "did not answer in time"
        self.fail(UpstreamTimeout(f"the upstream {what}"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if not self.closed:
            assert self.transport is not None
            self.transport.resume_reading()

    def _gone(self) -> None:
        on_gone = self.on_gone
        if on_gone is not None:
            self.on_gone = None
            on_gone(self)


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the body has an end of its own (Content-Length, chunked), not the EOF."""
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            return True
        if lower == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked"):
            return True
    return False
