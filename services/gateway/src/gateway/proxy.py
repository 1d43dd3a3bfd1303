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
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive, Scope, Send

from gateway.errors import BadRequest, BodyTooLarge, ClientGone, GatewayError
from gateway.headers import downstream_response_headers, upstream_request_headers
from gateway.routing import Route
from gateway.upstream import Body, UpstreamClient, UpstreamRequest, UpstreamResponse
from servicekit.context import request_id_var
from servicekit.middleware import ROUTE_SCOPE_KEY
from servicekit.problem import send_problem

logger = logging.getLogger("gateway.proxy")

# Bodies up to this size (by Content-Length) are read whole before forwarding: one
# write upstream instead of a streamed payload. Larger ones are streamed.
SMALL_BODY_BYTES = 64 * 1024


class RequestBody:
    """The client's body as an async iterable, cut off at the route's limit.

    It remembers why it stopped (too large, client gone), because the upstream client
    may wrap the exception it raises into one of its own.
    """

    __slots__ = ("_limit", "_receive", "done", "error")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.done = False
        self.error: GatewayError | None = None

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        while not self.done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.error = ClientGone("the client went away while sending the body")
                raise self.error
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > self._limit:
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


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    route: Route,
    *,
    path: str,
    client: UpstreamClient,
) -> None:
    """Proxy the request in `scope` to `route`'s upstream at `path` (already encoded)."""
    scope[ROUTE_SCOPE_KEY] = route.name
    started = False
    body: RequestBody | None = None
    try:
        headers = scope["headers"]
        length, chunked = body_framing(headers)
        payload: Body = None
        if length is not None and length > route.max_body_bytes:
            raise BodyTooLarge(f"the body exceeds this route's {route.max_body_bytes} bytes")
        if length or chunked:
            body = RequestBody(receive, route.max_body_bytes)
            payload = await body.read_all() if length and length <= SMALL_BODY_BYTES else body
        query = scope["query_string"]
        url = f"{route.origin}{path}?{query.decode('latin-1')}" if query else route.origin + path
        client_addr = scope.get("client")
        request = UpstreamRequest(
            method=scope["method"],
            url=url,
            headers=upstream_request_headers(
                headers,
                client_ip=client_addr[0] if client_addr else None,
                scheme=scope["scheme"],
                request_id=request_id_var.get() or "",
            ),
            body=payload,
            timeouts=route.timeouts,
        )
        async with client.send(request) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": downstream_response_headers(response.headers),
                }
            )
            started = True
            await _relay_body(response, receive, send, body is None or body.done)
    except GatewayError as exc:
        error = body.error if body is not None and body.error is not None else exc
        await _fail(error, route, send, started)
    except Exception:
        # The upstream client wrapped our own body error into one of its own.
        if body is None or body.error is None:
            raise
        await _fail(body.error, route, send, started)


async def _relay_body(
    response: UpstreamResponse, receive: Receive, send: Send, request_body_done: bool
) -> None:
    """Send the upstream body on; stop early if the client disconnects.

    uvicorn's `send` silently drops writes after a disconnect, so a multi-chunk body is
    watched by one pending `receive()`, which returns only when the client is gone.
    Single-chunk bodies (most API responses) never pay for the watcher.
    """
    watcher: asyncio.Future[Any] | None = None
    first = True
    try:
        async for chunk in response.iter_body():
            if watcher is not None:
                if watcher.done():
                    raise ClientGone("the client went away during the response")
            elif not first and request_body_done:
                watcher = asyncio.ensure_future(receive())
            first = False
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()


async def _fail(error: GatewayError, route: Route, send: Send, started: bool) -> None:
    if isinstance(error, ClientGone):
        logger.info("client went away", extra={"route": route.name, "reason": error.detail})
        return
    if started:
        # Too late for a status code: end the connection so the body reads as truncated.
        logger.warning("response cut short", extra={"route": route.name, "reason": error.detail})
        return
    headers = [(b"connection", b"close")] if isinstance(error, BodyTooLarge) else []
    await send_problem(send, error.status, error.detail, slug=error.slug, headers=headers)
