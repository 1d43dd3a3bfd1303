"""The seam between the proxy and whatever HTTP client talks to upstreams.

The proxy depends only on `UpstreamClient`. Production uses `H1Upstream` by default
(`upstream_h1`): an HTTP/1.1 client on asyncio and httptools that does only what a proxy
needs. aiohttp's per-request machinery had been about a third of a worker's CPU; this
client costs about a third of aiohttp's per request (in-process micro-benchmark,
keep-alive, small bodies). `AiohttpUpstream` stays as the fallback (GATEWAY_UPSTREAM_CLIENT=aiohttp;
bench/ measured it an order of magnitude cheaper per request than httpx on this path).
Tests, and anyone who prefers httpx, use `HttpxUpstream`, whose transport is the usual
httpx test seam (`MockTransport`, `ASGITransport`). test_upstream_clients.py holds both
production clients to one contract.

Implementations raise only `gateway.errors.UpstreamError` subclasses, from `send` and
from `iter_body`, and on leaving `send`'s context they either return the connection to
the pool (the whole response arrived, the request went out whole) or close it (anything
else), so an abandoned response can never pin a pooled connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from gateway.routing import Timeouts

Body = bytes | AsyncIterable[bytes] | None


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str  # absolute and already percent-encoded; sent exactly as given
    headers: list[tuple[str, str]]
    body: Body
    timeouts: Timeouts


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        """Raw header pairs as received (hop-by-hop ones included)."""
        ...

    def iter_body(self) -> AsyncIterator[bytes]:
        """The body as it arrives, undecoded (Content-Encoding stays as sent)."""
        ...


class UpstreamClient(Protocol):
    def send(self, request: UpstreamRequest) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send `request`; the response is usable until the context exits."""
        ...

    async def aclose(self) -> None: ...
