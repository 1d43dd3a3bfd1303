"""The httpx upstream client: the test seam, so it must behave like the production one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.errors import UpstreamBroken, UpstreamTimeout
from gateway.routing import Timeouts
from gateway.upstream import UpstreamRequest
from gateway.upstream_httpx import HttpxUpstream

TIMEOUTS = Timeouts(connect=1.5, read=4, total=9)


def request(url: str = "http://up.test/x", **more: object) -> UpstreamRequest:
    fields: dict[str, object] = {"method": "GET", "url": url, "headers": [], "body": None}
    fields.update(more)
    return UpstreamRequest(timeouts=TIMEOUTS, **fields)  # type: ignore[arg-type]


async def read_all(upstream: HttpxUpstream) -> bytes:
    async with upstream.send(request()) as response:
        return b"".join([chunk async for chunk in response.iter_body()])


async def test_timeouts_reach_the_transport() -> None:
    seen: list[dict[str, float]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.extensions["timeout"])
        return httpx.Response(204)

    upstream = HttpxUpstream(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    async with upstream.send(request()) as response:
        assert response.status == 204
    await upstream.aclose()
    assert seen == [{"connect": 1.5, "read": 4, "write": 4, "pool": 1.5}]


async def test_the_client_defaults_are_not_added() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, headers={"set-cookie": "s=1"})

    client = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), headers={"x-client-default": "1"}
    )
    upstream = HttpxUpstream(client)
    for _ in range(2):
        async with upstream.send(request(headers=[("x-given", "1")])):
            pass
    await upstream.aclose()
    assert sorted(seen[1].headers.keys()) == ["host", "x-given"]


async def test_the_body_is_raw_and_the_stream_closed() -> None:
    closed: list[bool] = []

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"\x1f\x8b raw "
            yield b"bytes"

        async def aclose(self) -> None:
            closed.append(True)

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": "gzip"}, stream=Body())

    upstream = HttpxUpstream(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    async with upstream.send(request()) as response:
        chunks = [chunk async for chunk in response.iter_body()]
    await upstream.aclose()
    assert chunks == [b"\x1f\x8b raw ", b"bytes"]
    assert closed == [True]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ReadTimeout("stalled"), UpstreamTimeout),
        (httpx.ReadError("reset"), UpstreamBroken),
        (httpx.RemoteProtocolError("garbage"), UpstreamBroken),
    ],
)
async def test_errors_mid_body(error: Exception, expected: type[Exception]) -> None:
    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"start"
            raise error

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Body())

    upstream = HttpxUpstream(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    with pytest.raises(expected):
        await read_all(upstream)
    await upstream.aclose()
