"""An upstream client on httpx: the test seam, and an option where cost matters less.

Give it an `httpx.AsyncClient` built with the transport you want: `MockTransport` in
unit tests, `ASGITransport` to put an app behind the gateway in-process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx

from gateway.errors import UpstreamBroken, UpstreamTimeout, UpstreamUnreachable
from gateway.upstream import UpstreamRequest


class HttpxResponse:
    __slots__ = ("_response",)

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._response.headers.raw

    async def iter_body(self) -> AsyncIterator[bytes]:
        # The raw stream rather than `aiter_raw()`, which refuses a response built whole
        # (as MockTransport handlers build them) although its raw bytes are all there.
        stream = self._response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        try:
            async for chunk in stream:
                yield chunk
        except httpx.TimeoutException:
            raise UpstreamTimeout("the upstream stopped sending the body") from None
        except httpx.TransportError as exc:
            raise UpstreamBroken(f"the upstream broke off the body: {exc}") from None


class HttpxUpstream:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    @asynccontextmanager
    async def send(self, request: UpstreamRequest) -> AsyncGenerator[HttpxResponse]:
        t = request.timeouts
        timeout = httpx.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.connect)
        # A bare Request, not `client.build_request`: that would add the client's default
        # headers (an invented Accept-Encoding, User-Agent, ...) and the cookies it stored
        # from earlier responses, which belong to other clients of the gateway.
        built = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            content=request.body,
            extensions={"timeout": timeout.as_dict()},
        )
        try:
            # httpx has no whole-exchange timeout; bound the wait for the headers here.
            async with asyncio.timeout(t.total):
                response = await self._client.send(built, stream=True)
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamTimeout("the upstream did not answer in time") from None
        except httpx.ConnectError as exc:
            raise UpstreamUnreachable(f"cannot connect to the upstream: {exc}") from None
        except httpx.TransportError as exc:
            raise UpstreamBroken(f"the upstream connection failed: {exc}") from None
        try:
            yield HttpxResponse(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
