"""Forward one request to its route's upstream and stream the answer back.

Both bodies are streamed, never held whole: the request body flows to the upstream as
the client sends it (bounded by the route's `max_body_bytes`) and the response flows
back chunk by chunk. The upstream response is always released on the way out, also
when the client goes away mid-body; a half-read upstream connection is closed, not
pooled.

Errors the gateway makes (see `errors`) become problem+json only while nothing has been
sent; once the response has started, the connection is cut so that the client sees a
truncated body rather than a complete-looking wrong one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from starlette.types import Receive, Scope, Send

from gateway.breaker import CircuitOpen
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    ClientGone,
    GatewayError,
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.guards import RouteGuards
from gateway.headers import downstream_response_headers, upstream_request_headers
from gateway.hygiene import BodyTimeout
from gateway.metrics import GatewayMetrics, RouteMetrics
from gateway.routing import Route, Timeouts
from gateway.upstream import Body, UpstreamClient, UpstreamRequest, UpstreamResponse
from servicekit.context import request_id_var
from servicekit.middleware import ROUTE_SCOPE_KEY, STATUS_SCOPE_KEY
from servicekit.problem import send_problem
from servicekit.server_span import HTTP_ROUTE_SCOPE_KEY

logger = logging.getLogger("gateway.proxy")

# Bodies up to this size (by Content-Length) are read whole before forwarding: one
# write upstream instead of a streamed payload. Larger ones are streamed.
SMALL_BODY_BYTES = 64 * 1024


class RequestBody:
    """The client's body as an async iterable, cut off at the route's limit.

    It remembers why it stopped (too large, client gone), because the upstream client
    may wrap the exception it raises into one of its own.
    """

    __slots__ = ("_limit", "_receive", "done", "error", "received")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.done = False
        self.received = 0
        self.error: GatewayError | None = None

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.done:
            try:
                message = await self._receive()
            except GatewayError as exc:  # the dispatcher's BodyTimeout: the client stalled
                self.error = exc
                raise
            if message["type"] == "http.disconnect":
                self.error = ClientGone("the client went away while sending the body")
                raise self.error
            chunk: bytes = message.get("body", b"")
            self.received += len(chunk)
            if self.received > self._limit:
                self.error = BodyTooLarge(f"the body exceeds this route's {self._limit} bytes")
                raise self.error
            self.done = not message.get("more_body", False)
            if chunk:
                yield chunk


def body_framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """Content-Length (if any) and whether the body is chunked; refuses ambiguous framing."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise BadRequest("invalid or conflicting Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    if chunked and length is not None:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    return length, chunked


@dataclass(slots=True)
class _Exchange:
    """One client request on its way upstream: what every attempt needs."""

    scope: Scope
    receive: Receive
    send: Send
    route: Route
    client: UpstreamClient
    guards: RouteGuards
    metrics: RouteMetrics
    url: str
    headers: list[tuple[str, str]]
    payload: Body
    body: RequestBody | None
    deadline: float
    started: bool = False

    @property
    def replayable(self) -> bool:
        # Only a body held whole may be sent twice; a streamed one is gone once sent.
        return not isinstance(self.payload, RequestBody)


class _Counted(Exception):
    """An upstream error already counted in the outcome metric, on its way to `_fail`."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.detail)
        self.error = error


def _remaining(timeouts: Timeouts, seconds: float) -> Timeouts:
    """The route's timeouts cut to what is left of its total, for a retry."""
    left = max(seconds, 0.001)
    return Timeouts.model_construct(
        connect=min(timeouts.connect, left), read=min(timeouts.read, left), total=left
    )


class Proxy:
    """Forwards requests; holds what every request needs: metrics per route, a tracer."""

    def __init__(self, routes: list[Route], metrics: GatewayMetrics, tracer: Tracer | None) -> None:
        self._metrics = {route.name: metrics.for_route(route.name) for route in routes}
        self._tracer = tracer
        self._peers = {route.name: _peer(route) for route in routes}

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        *,
        path: str,
        client: UpstreamClient,
        guards: RouteGuards,
    ) -> None:
        """Proxy the request in `scope` to `route`'s upstream at `path` (already encoded).

        Order: framing and size checks, auth and rate limit, then up to `retry.attempts`
        attempts, each asking the circuit breaker first. Nothing reaches the upstream
        before the request is admitted.
        """
        scope[ROUTE_SCOPE_KEY] = route.name
        # servicekit's server span takes its name and `http.route` from this.
        scope[HTTP_ROUTE_SCOPE_KEY] = route.prefix
        if self._tracer is not None:
            server_span = trace.get_current_span()
            if server_span.is_recording():
                server_span.set_attribute("gateway.route", route.name)
        metrics = self._metrics[route.name]
        exchange: _Exchange | None = None
        body: RequestBody | None = None
        try:
            headers = scope["headers"]
            length, chunked = body_framing(headers)
            if length is not None and length > route.max_body_bytes:
                raise BodyTooLarge(f"the body exceeds this route's {route.max_body_bytes} bytes")
            client_addr = scope.get("client")
            peer = client_addr[0] if client_addr else None
            principal = await guards.admit(headers, peer)
            payload: Body = None
            if length or chunked:
                body = RequestBody(receive, route.max_body_bytes)
                small = length and length <= SMALL_BODY_BYTES
                payload = await body.read_all() if small else body
            query = scope["query_string"]
            url = route.origin + path
            if query:
                url += "?" + query.decode("latin-1")
            exchange = _Exchange(
                scope=scope,
                receive=receive,
                send=send,
                route=route,
                client=client,
                guards=guards,
                metrics=metrics,
                url=url,
                headers=upstream_request_headers(
                    guards.upstream_headers(headers, principal),
                    client_ip=peer,
                    scheme=scope["scheme"],
                    request_id=request_id_var.get() or "",
                    own_trace_context=self._tracer is not None,
                ),
                payload=payload,
                body=body,
                deadline=time.monotonic() + route.timeouts.total,
            )
            guards.start()
            timeouts = route.timeouts
            attempt = 1
            while (delay := await self._attempt(exchange, attempt, timeouts)) is not None:
                await asyncio.sleep(delay)
                attempt += 1
                timeouts = _remaining(route.timeouts, exchange.deadline - time.monotonic())
        except Exception as exc:
            started = exchange is not None and exchange.started
            counted = started or isinstance(exc, _Counted)
            if isinstance(exc, _Counted):
                exc = exc.error
            # The upstream client may have wrapped our own body error into one of its own.
            error = body.error if body is not None and body.error is not None else exc
            if not isinstance(error, GatewayError):
                raise
            if isinstance(error, ClientGone):
                scope[STATUS_SCOPE_KEY] = error.status  # logged and counted as 499, not 500
            await _fail(error, route, send, started, metrics, counted=counted)
        finally:
            if body is not None:
                metrics.request_bytes.inc(body.received)

    async def _attempt(self, ex: _Exchange, attempt: int, timeouts: Timeouts) -> float | None:
        """One try at the upstream: relays its response and returns None, or returns the
        delay before the next try, or raises what the client should be told."""
        guards, metrics, method = ex.guards, ex.metrics, ex.scope["method"]
        permit = guards.permit()
        headers = list(ex.headers) if attempt > 1 else ex.headers  # each try its own span
        try:
            with self._client_span(ex.scope, ex.route, ex.url, headers) as span:
                metrics.in_flight.inc()
                try:
                    sent_at = time.perf_counter()
                    request = UpstreamRequest(method, ex.url, headers, ex.payload, timeouts)
                    async with ex.client.send(request) as response:
                        metrics.latency.observe(time.perf_counter() - sent_at)
                        metrics.outcomes["ok"].inc()
                        status = response.status
                        if span is not None:
                            span.set_attribute("http.response.status_code", status)
                        guards.settle(permit, status)
                        delay = guards.retry_delay(
                            method,
                            attempt,
                            status,
                            replayable=ex.replayable,
                            remaining=ex.deadline - time.monotonic(),
                        )
                        if delay is not None:
                            return delay  # leaving unread closes that connection
                        await ex.send(
                            {
                                "type": "http.response.start",
                                "status": status,
                                "headers": downstream_response_headers(response.headers),
                            }
                        )
                        ex.started = True
                        body_done = ex.body is None or ex.body.done
                        await _relay_body(response, ex.receive, ex.send, body_done, metrics)
                        return None
                finally:
                    metrics.in_flight.dec()
        except UpstreamError as exc:
            if ex.started or (ex.body is not None and ex.body.error is not None):
                raise
            metrics.outcomes[_OUTCOME_OF.get(type(exc), "broken")].inc()
            guards.settle(permit, exc)
            delay = guards.retry_delay(
                method,
                attempt,
                exc,
                replayable=ex.replayable,
                remaining=ex.deadline - time.monotonic(),
            )
            if delay is None:
                raise _Counted(exc) from None
            return delay
        finally:
            guards.release(permit)

    def _client_span(
        self, scope: Scope, route: Route, url: str, headers: list[tuple[str, str]]
    ) -> AbstractContextManager[Span | None]:
        """A client span for this upstream attempt, its context injected into `headers`."""
        if self._tracer is None:
            return nullcontext()
        peer = self._peers[route.name]
        return _traced(self._tracer, scope["method"], route, url, headers, peer=peer)


def _peer(route: Route) -> tuple[str, int]:
    """The upstream's host and port, as the semantic conventions name `server.*`."""
    parts = urlsplit(route.origin)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


@contextmanager
def _traced(
    tracer: Tracer,
    method: str,
    route: Route,
    url: str,
    headers: list[tuple[str, str]],
    *,
    peer: tuple[str, int],
) -> Iterator[Span]:
    with tracer.start_as_current_span(
        method,
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": method,
            "url.full": url,
            # A host name and a port, not a URL: backends draw uninstrumented peers by these.
            "server.address": peer[0],
            "server.port": peer[1],
            "gateway.route": route.name,
            "gateway.upstream": route.upstream,
        },
    ) as span:
        carrier: dict[str, str] = {}
        inject(carrier)
        headers.extend(carrier.items())
        yield span


async def _relay_body(
    response: UpstreamResponse,
    receive: Receive,
    send: Send,
    request_body_done: bool,
    metrics: RouteMetrics | None = None,
) -> None:
    """Send the upstream body on; stop early if the client disconnects.

    uvicorn's `send` silently drops writes after a disconnect, so a multi-chunk body is
    watched by one pending `receive()`, which returns only when the client is gone.
    Single-chunk bodies (most API responses) never pay for the watcher.
    """
    watcher: asyncio.Future[None] | None = None
    first = True
    relayed = 0
    try:
        async for chunk in response.iter_body():
            if watcher is not None:
                if watcher.done():
                    raise ClientGone("the client went away during the response")
            elif not first and request_body_done:
                watcher = asyncio.ensure_future(_disconnected(receive))
            first = False
            relayed += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()
        if metrics is not None:
            metrics.response_bytes.inc(relayed)


async def _disconnected(receive: Receive) -> None:
    """Returns once the client is gone.

    The first `receive()` after a bodiless request is the (empty) end of its body, not a
    disconnect: it is skipped, or every streamed response would be cut after two chunks.
    """
    while (await receive())["type"] != "http.disconnect":
        pass


_OUTCOME_OF = {
    UpstreamTimeout: "timeout",
    UpstreamUnreachable: "connect_error",
    UpstreamBroken: "broken",
    ClientGone: "client_gone",
    BodyTooLarge: "body_too_large",
    CircuitOpen: "circuit_open",
    BodyTimeout: "client_timeout",
}


async def _fail(
    error: GatewayError,
    route: Route,
    send: Send,
    started: bool,
    metrics: RouteMetrics,
    *,
    counted: bool,
) -> None:
    outcome = _OUTCOME_OF.get(type(error))
    if outcome is not None and not counted:
        metrics.outcomes[outcome].inc()
    if started and not isinstance(error, ClientGone):
        # The server span saw a good status go out; only this knows the body was cut.
        # Before that, the problem's status decides (5xx: ERROR), and a client gone is
        # not the server's error.
        span = trace.get_current_span()
        if span.is_recording():
            span.set_status(StatusCode.ERROR, error.detail)
    if isinstance(error, ClientGone):
        logger.info("client went away", extra={"route": route.name, "reason": error.detail})
        return
    if started:
        # Too late for a status code: end the connection so the body reads as truncated.
        logger.warning("response cut short", extra={"route": route.name, "reason": error.detail})
        return
    headers = list(error.headers)
    if isinstance(error, BodyTooLarge):
        # The unread rest of the body would otherwise be parsed as the next request.
        headers.append((b"connection", b"close"))
    await send_problem(send, error.status, error.detail, slug=error.slug, headers=headers)
