from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from downstream_mock.app import create_app
from downstream_mock.settings import Settings

from .support import assert_problem, running

BOUNDARY = "test-boundary-7c1f"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, content: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
    return head + content + b"\r\n"


CLOSE = f"--{BOUNDARY}--\r\n".encode()


async def test_two_files_and_fields(client: httpx.AsyncClient) -> None:
    first, second = os.urandom(100_000), b"second file\r\n--not-a-boundary"
    response = await client.post(
        "/upload",
        files=[
            ("doc", ("a.bin", first, "application/octet-stream")),
            ("doc", ("b.txt", second, "text/plain")),
        ],
        data={"note": "hello", "tag": ["x", "y"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["files"] == [
        {
            "field": "doc",
            "filename": "a.bin",
            "content_type": "application/octet-stream",
            "size": len(first),
            "sha256": hashlib.sha256(first).hexdigest(),
        },
        {
            "field": "doc",
            "filename": "b.txt",
            "content_type": "text/plain",
            "size": len(second),
            "sha256": hashlib.sha256(second).hexdigest(),
        },
    ]
    assert body["fields"] == {"note": ["hello"], "tag": ["x", "y"]}
    assert body["total_bytes"] == int(response.request.headers["content-length"])


async def test_empty_file_and_utf8_filename(client: httpx.AsyncClient) -> None:
    content = part("f", b"", filename="café.txt") + part("g", b"z", filename="") + CLOSE
    response = await client.post("/upload", content=content, headers={"content-type": MULTIPART})
    files = response.json()["files"]
    assert [(f["field"], f["filename"], f["size"]) for f in files] == [
        ("f", "café.txt", 0),
        ("g", "", 1),
    ]
    assert files[0]["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_streamed_chunked_upload(client: httpx.AsyncClient) -> None:
    data = os.urandom(300_000)

    async def body() -> AsyncIterator[bytes]:
        yield part("file", b"", filename="s.bin")[:-2]
        for offset in range(0, len(data), 7_000):
            yield data[offset : offset + 7_000]
        yield b"\r\n" + CLOSE

    response = await client.post("/upload", content=body(), headers={"content-type": MULTIPART})
    assert response.status_code == 200, response.text
    (uploaded,) = response.json()["files"]
    assert uploaded["size"] == len(data)
    assert uploaded["sha256"] == hashlib.sha256(data).hexdigest()


async def test_declared_too_large_is_413(client: httpx.AsyncClient) -> None:
    # The settings fixture allows 1 MiB.
    content = part("f", os.urandom(1024 * 1024), filename="big") + CLOSE
    response = await client.post("/upload", content=content, headers={"content-type": MULTIPART})
    assert_problem(response, 413, "upload-too-large")


async def test_streamed_too_large_is_413(client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield part("f", b"", filename="big")[:-2]
        for _ in range(20):
            yield b"x" * 65536

    response = await client.post("/upload", content=body(), headers={"content-type": MULTIPART})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "upload-too-large")


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "multipart/mixed; boundary=x"]
)
async def test_not_multipart_form_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/upload", content=b"{}", headers=headers)
    assert_problem(response, 415, "unsupported-media-type")


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("multipart/form-data", part("f", b"x", filename="a") + CLOSE),
        (MULTIPART, part("f", b"cut short", filename="a")),
        (MULTIPART, b"this is not multipart at all"),
        (MULTIPART, b""),
    ],
    ids=["no-boundary", "truncated", "garbage", "empty"],
)
async def test_malformed_is_422(
    client: httpx.AsyncClient, content_type: str, content: bytes
) -> None:
    response = await client.post("/upload", content=content, headers={"content-type": content_type})
    assert_problem(response, 422, "malformed-multipart")


async def test_form_fields_over_their_limit_are_413(tmp_path: Path) -> None:
    # Fields are kept in memory to be echoed, so together they may hold 1 MiB at most,
    # even when the upload limit allows far more.
    settings = Settings(state_dir=tmp_path, access_log=False, max_upload_bytes=8 * 1024 * 1024)
    fits = part("a", b"a" * 500_000) + part("b", b"b" * 500_000) + CLOSE
    too_much = part("a", b"a" * 600_000) + part("b", b"b" * 600_000) + CLOSE
    async with running(create_app(settings)) as client:
        ok = await client.post("/upload", content=fits, headers={"content-type": MULTIPART})
        over = await client.post("/upload", content=too_much, headers={"content-type": MULTIPART})
    assert ok.status_code == 200
    assert [len(v[0]) for v in ok.json()["fields"].values()] == [500_000, 500_000]
    assert_problem(over, 413, "upload-too-large")


async def test_get_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.get("/upload")).status_code == 405


async def test_memory_stays_flat_for_a_large_upload(tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    settings = Settings(state_dir=tmp_path, access_log=False, max_upload_bytes=2 * size)
    block = os.urandom(1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        yield part("file", b"", filename="large.bin")[:-2]
        for _ in range(size // len(block)):
            yield block
        yield b"\r\n" + CLOSE

    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    async with running(create_app(settings)) as client:
        tracemalloc.start()
        try:
            response = await client.post(
                "/upload", content=body(), headers={"content-type": MULTIPART}
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 200, response.text
    (uploaded,) = response.json()["files"]
    assert uploaded["size"] == size
    assert uploaded["sha256"] == expected
    # A few chunks in flight at most; buffering the upload would be over 64 MiB.
    assert peak < 8 * 1024 * 1024, peak
