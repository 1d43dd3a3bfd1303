"""The production upstream client: one pooled aiohttp session per worker."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache

import aiohttp
from yarl import URL

from gateway.errors import (
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    reason,
)
from gateway.routing import Timeouts
from gateway.upstream import UpstreamRequest

# aiohttp adds these when the client did not send them; a proxy must not. An invented
# Accept-Encoding, say, would get the client a compressed body it never asked for.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


class AiohttpResponse:
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._response.raw_headers

    async def iter_body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout("the upstream stopped sending the body") from None
        except aiohttp.ClientError as exc:
            raise UpstreamBroken(f"the upstream broke off the body: {reason(exc)}") from None

    @property
    def complete(self) -> bool:
        return self._response.content.at_eof()


class AiohttpUpstream:
    """Keeps connections to upstreams alive and reuses them across requests."""

    def __init__(self, *, max_connections: int = 1000, keepalive_seconds: float = 15.0) -> None:
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            # Shorter than the upstream's own keep-alive, so we close idle connections
            # before it does and never reuse one it is closing.
            keepalive_timeout=keepalive_seconds,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    @property
    def connector(self) -> aiohttp.BaseConnector:
        connector = self._session.connector
        assert connector is not None
        return connector

    @asynccontextmanager
    async def send(self, request: UpstreamRequest) -> AsyncGenerator[AiohttpResponse]:
        try:
            response = await self._session.request(
                request.method,
                URL(request.url, encoded=True),
                headers=request.headers,
                data=request.body,
                timeout=_client_timeout(request.timeouts),
                allow_redirects=False,
            )
        except UpstreamError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError):
            raise UpstreamTimeout("the upstream did not answer in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(f"cannot connect to the upstream: {reason(exc)}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamBroken(f"the upstream connection failed: {reason(exc)}") from None
        wrapped = AiohttpResponse(response)
        try:
            yield wrapped
        except BaseException:
            response.close()
            raise
        if wrapped.complete:
            response.release()  # back to the pool
        else:
            response.close()  # half-read: the connection cannot be reused

    async def aclose(self) -> None:
        await self._session.close()


@lru_cache(maxsize=256)
def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
    )
