"""`/bytes/{n}` and `/stream/{chunks}`: bodies that are large, or slow, on demand.

`/bytes` lets a test check that the gateway streams a large body through intact and
without buffering it: the content is a pattern anyone can recompute, so the client can
verify every byte without a checksum header. `/stream` sends chunks over time without a
Content-Length, so the gateway has to pass chunked transfer through as it arrives.
"""

# No `from __future__ import annotations`: the endpoints' annotations name bounds
# from the settings, local to the router factory, which FastAPI must evaluate eagerly.

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import StreamingResponse

from downstream_mock.settings import Settings

CHUNK_SIZE = 64 * 1024
# A prime, so the pattern does not line up with any power-of-two buffer size and a
# dropped or repeated chunk shows up as a wrong byte.
PATTERN_PERIOD = 251
# Long enough that a chunk of CHUNK_SIZE can start at any phase of the pattern.
_PATTERN = bytes(range(PATTERN_PERIOD)) * (CHUNK_SIZE // PATTERN_PERIOD + 2)


def pattern_bytes(offset: int, length: int) -> bytes:
    """The bytes at [offset, offset + length) of the /bytes body: byte i is i % 251."""
    start = offset % PATTERN_PERIOD
    return _PATTERN[start : start + length]


async def pattern_chunks(total: int) -> AsyncIterator[bytes]:
    offset = 0
    while offset < total:
        length = min(CHUNK_SIZE, total - offset)
        yield pattern_bytes(offset, length)
        offset += length


async def json_lines(chunks: int, interval: float) -> AsyncIterator[bytes]:
    for index in range(chunks):
        if index:
            await asyncio.sleep(interval)
        line = {"chunk": index + 1, "of": chunks, "ts": time.time()}
        yield json.dumps(line, separators=(",", ":")).encode() + b"\n"


def streams_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["streams"])
    max_bytes = settings.max_bytes
    max_chunks = settings.max_chunks

    @router.get(
        "/bytes/{n}",
        operation_id="bytes",
        summary="Stream n bytes of a verifiable pattern.",
        description=(
            f"Streams `n` bytes (0-{max_bytes}) in 64 KiB chunks with Content-Length. "
            "The byte at offset i is `i % 251`, so a client can verify the content. "
            "Out of range is 422."
        ),
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def bytes_(n: Annotated[int, Path(ge=0, le=max_bytes)]) -> StreamingResponse:
        return StreamingResponse(
            pattern_chunks(n),
            media_type="application/octet-stream",
            headers={"content-length": str(n)},
        )

    @router.get(
        "/stream/{chunks}",
        operation_id="stream",
        summary="Stream JSON lines over time.",
        description=(
            f"Sends `chunks` (1-{max_chunks}) JSON lines, `interval` seconds (0-1) apart, "
            "chunked, without Content-Length. Out of range is 422."
        ),
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    async def stream(
        chunks: Annotated[int, Path(ge=1, le=max_chunks)],
        interval: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False)] = 0.05,
    ) -> StreamingResponse:
        return StreamingResponse(json_lines(chunks, interval), media_type="application/x-ndjson")

    return router
