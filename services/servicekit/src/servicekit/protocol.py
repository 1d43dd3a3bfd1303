"""uvicorn's httptools protocol, with the guards it lacks in front of untrusted clients.

httptools (llhttp, strict mode) already refuses ambiguous framing, bad header names,
control characters in values, obs-fold and unknown methods. What it does not do:

- limit header size or count: a 16 MiB header value is buffered whole before the app
  sees anything. Here the head is cut off at `HeadLimits.max_bytes`/`max_count`
  with 431 problem+json, while it arrives.
- put a deadline on a request head: uvicorn's keep-alive timer stops at the first byte
  of a request and nothing replaces it, so a client sending a header a byte a minute
  holds the connection for ever (slowloris). Here the head must be complete within
  `HeadLimits.timeout` of its first byte, or the client gets 408 and the connection
  closes. A new connection that sends nothing is closed after the keep-alive idle
  timeout, exactly as an idle keep-alive connection would be.
- tell clients to go elsewhere while the server drains: every response then carries
  `Connection: close`, so pooled clients reconnect through the load balancer to another
  replica instead of reusing a connection to one that is about to stop accepting.

uvicorn's own 400 for unparseable requests becomes problem+json too. Bodies are the
app's business (the gateway times out slow ones per chunk). This subclasses a uvicorn
internal; `tests/test_protocol.py` runs it against a real server, so an upgrade of
uvicorn that moves these hooks fails there.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from asyncio import TimerHandle
from typing import Any

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from servicekit.policy import HeadLimits
from servicekit.problem import PROBLEM_CONTENT_TYPE, problem_body

logger = logging.getLogger("servicekit.protocol")

# For a server that does not say (a plain uvicorn given this class): twice the defaults
# of ServiceSettings, as `server_policy` makes them.
DEFAULT_HEAD_LIMITS = HeadLimits(max_count=200, max_bytes=64 * 1024, timeout=10.0)
# Per header line besides name and value: ": " and CRLF.
_LINE_OVERHEAD = 4
# The per-read count also sees the method, the version and line ends; this much over
# the limit is let through to the exact count, which decides once the head is complete.
_READ_SLACK = 256


class GuardedServerState(ServerState):
    """uvicorn's per-server state, plus what this protocol reads: limits, draining."""

    def __init__(self, head_limits: HeadLimits | None = None) -> None:
        super().__init__()
        self.head_limits = head_limits or DEFAULT_HEAD_LIMITS
        # Set by servicekit.drain when SIGTERM arrives.
        self.draining = False


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; the refusal is already chosen."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = server_state if isinstance(server_state, GuardedServerState) else None
        self._limits = self._guard.head_limits if self._guard else DEFAULT_HEAD_LIMITS
        self._head_timer: TimerHandle | None = None
        # Between the end of one message and the end of the next head.
        self._reading_head = True
        # Bytes received while reading a head, counted per read: an upper bound that
        # stops a single huge header line, which httptools would buffer before any callback.
        self._head_received = 0
        # Exact, from the parser's callbacks.
        self._head_bytes = 0
        self._head_count = 0
        self._refusal: tuple[int, str, str] | None = None
        # The app task created by the data being parsed right now, if any: it has not
        # run yet, so a refusal can still keep the app from ever seeing the request.
        self._unstarted_task: asyncio.Task[None] | None = None

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response, so a connection that
        # never sends a byte would stay open for ever; treat it as idle keep-alive.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with our refusals instead of its plain-text 400.
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_received += len(data)
        self._unstarted_task = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is None:
                self._refusal = (400, "the request is not valid HTTP/1.1", "malformed-request")
            self._refuse()
            return
        if self._reading_head and self._head_received > self._limits.max_bytes + _READ_SLACK:
            self._refusal = (431, "the request head is too large", "headers-too-large")
            self._refuse()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._head_count = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._limits.timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_bytes:
            self._refuse_head_too_large("the request line is too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        self._head_bytes += len(name) + len(value) + _LINE_OVERHEAD
        if self._head_count > self._limits.max_count:
            self._refuse_head_too_large("the request has too many header fields")
        if self._head_bytes > self._limits.max_bytes:
            self._refuse_head_too_large("the request headers are too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._reading_head = False
        self._head_received = 0
        super().on_headers_complete()
        if self._guard is not None and self._guard.draining and self.cycle is not None:
            # uvicorn adds `Connection: close` and closes once the response is sent.
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_received = 0

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn's, keeping the task: llhttp reports some errors (a Transfer-Encoding
        # it refuses, say) only after `on_headers_complete` has created it.
        if self.config.reset_contextvars:
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._unstarted_task = task

    # Refusals

    def _refuse_head_too_large(self, detail: str) -> None:
        self._refusal = (431, detail, "headers-too-large")
        raise _HeadTooLarge(detail)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head arriving while a response is still being sent: it may
            # wait for that response, but no longer than another full timeout.
            self._head_timer = self.loop.call_later(self._limits.timeout, self._head_timed_out)
            return
        self._refusal = (408, "the request head did not arrive in time", "request-head-timeout")
        self._refuse()

    def _refuse(self) -> None:
        """Answer the refusal (unless a response is under way) and close the connection."""
        status, detail, slug = self._refusal or (400, "bad request", "malformed-request")
        client = self.client[0] if self.client else None
        logger.info("request refused", extra={"status": status, "reason": detail, "client": client})
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The request was handed to the app before the parser found it bad. The app
            # now sees a disconnect, its writes are dropped, and if it has not run yet it
            # never will: nothing of this request may reach an upstream.
            cycle.disconnected = True
            cycle.message_event.set()
            if self._unstarted_task is not None:
                self._unstarted_task.cancel()
        if cycle is None or not cycle.response_started or cycle.response_complete:
            body = problem_body(status, detail, slug=slug)
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: ",
                    PROBLEM_CONTENT_TYPE.encode(),
                    b"\r\ncontent-length: ",
                    str(len(body)).encode(),
                    b"\r\nconnection: close\r\n\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
        self._reading_head = False  # nothing more is parsed on this connection
        self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
