from __future__ import annotations

import json
import time

import httpx
import pytest

from downstream_mock.streams import CHUNK_SIZE, json_lines, pattern_bytes, pattern_chunks

from .support import assert_problem


def expected_pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


@pytest.mark.parametrize("offset", [0, 1, 250, 251, 252, 65536, 10**9 + 3])
def test_pattern_bytes_at_any_offset(offset: int) -> None:
    chunk = pattern_bytes(offset, CHUNK_SIZE)
    assert len(chunk) == CHUNK_SIZE
    assert chunk == bytes((offset + i) % 251 for i in range(CHUNK_SIZE))


@pytest.mark.parametrize("n", [0, 1, 251, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17])
async def test_bytes_content_and_length(client: httpx.AsyncClient, n: int) -> None:
    response = await client.get(f"/bytes/{n}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(n)
    assert response.content == expected_pattern(n)


async def test_bytes_are_produced_in_bounded_chunks() -> None:
    # httpx's ASGI transport collects the whole response, so the chunking is checked on
    # the generator the response streams from.
    n = 4 * CHUNK_SIZE + 5
    sizes = [len(chunk) async for chunk in pattern_chunks(n)]
    assert sizes == [CHUNK_SIZE] * 4 + [5]


async def test_bytes_at_the_limit(client: httpx.AsyncClient) -> None:
    # The settings fixture allows 1 MiB.
    response = await client.get(f"/bytes/{1024 * 1024}")
    assert response.status_code == 200
    assert len(response.content) == 1024 * 1024


@pytest.mark.parametrize("n", ["-1", str(1024 * 1024 + 1), "1.5", "many"])
async def test_bytes_out_of_bounds_is_422(client: httpx.AsyncClient, n: str) -> None:
    assert_problem(await client.get(f"/bytes/{n}"), 422, "validation")


async def test_stream_sends_json_lines(client: httpx.AsyncClient) -> None:
    start = time.monotonic()
    response = await client.get("/stream/4?interval=0.05")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "content-length" not in response.headers
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["chunk"] for line in lines] == [1, 2, 3, 4]
    assert all(line["of"] == 4 for line in lines)
    # Three intervals between four lines.
    assert time.monotonic() - start >= 0.15


async def test_stream_lines_are_spread_over_time() -> None:
    start = time.monotonic()
    arrivals = [time.monotonic() - start async for _ in json_lines(3, 0.1)]
    assert arrivals[0] < 0.05
    assert 0.1 <= arrivals[1] < arrivals[2]
    assert arrivals[2] >= 0.2


async def test_stream_default_interval(client: httpx.AsyncClient) -> None:
    response = await client.get("/stream/1")
    assert response.status_code == 200
    assert [json.loads(line)["chunk"] for line in response.text.splitlines()] == [1]


@pytest.mark.parametrize(
    "url",
    ["/stream/0", "/stream/21", "/stream/x", "/stream/2?interval=1.5", "/stream/2?interval=-1"],
)
async def test_stream_out_of_bounds_is_422(client: httpx.AsyncClient, url: str) -> None:
    # The settings fixture allows 20 chunks.
    assert_problem(await client.get(url), 422, "validation")
