"""Streaming: bodies cross the gateway intact, as they arrive, and without being buffered.

Guards that downloads and multipart uploads arrive byte-exact, that a chunked response
is passed on chunk by chunk rather than collected, and (host_process) that moving
100 MiB each way grows the gateway workers' memory by less than 20 MiB - which only
holds if neither body is ever held whole.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .support import (
    GatewayProcesses,
    MiB,
    MultipartUpload,
    RssSampler,
    download_and_verify,
)

TRANSFER_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
LARGE = 100 * MiB
MAX_RSS_GROWTH = 20 * MiB
# About 2 s per 100 MiB: some 40 RSS samples, and a slow enough client that a gateway
# without backpressure would pile the difference up in memory.
PACE = 50 * MiB


def upload(
    client: httpx.Client, payload: MultipartUpload, *, rate: float | None = None
) -> dict[str, object]:
    response = client.post(
        "/mock/upload",
        content=payload.body(rate=rate),
        headers={"Content-Type": payload.content_type},
        timeout=TRANSFER_TIMEOUT,
    )
    assert response.status_code == 200, response.text[:500]
    assert response.request.headers.get("transfer-encoding") == "chunked"
    files = response.json()["files"]
    assert len(files) == 1, files
    file = files[0]
    assert isinstance(file, dict)
    return file


def test_download_arrives_intact(client: httpx.Client) -> None:
    size = 10 * MiB + 123
    check = download_and_verify(client, size, timeout=TRANSFER_TIMEOUT)
    assert check.size == size
    assert check.first_mismatch is None, f"first wrong byte at offset {check.first_mismatch}"


def test_empty_download(client: httpx.Client) -> None:
    check = download_and_verify(client, 0, timeout=TRANSFER_TIMEOUT)
    assert check.size == 0


def test_multipart_upload_arrives_intact(client: httpx.Client) -> None:
    payload = MultipartUpload(size=10 * MiB + 5)
    file = upload(client, payload)
    assert file["field"] == payload.field_name
    assert file["filename"] == payload.filename
    assert file["size"] == payload.size
    assert file["sha256"] == payload.sha256


def test_chunked_response_is_passed_on_as_it_arrives(client: httpx.Client) -> None:
    chunks, interval = 5, 0.4
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    with client.stream("GET", f"/mock/stream/{chunks}?interval={interval}") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers, response.headers
        for piece in response.iter_bytes():
            arrivals.append((time.monotonic() - started, piece))
    lines = b"".join(piece for _, piece in arrivals).splitlines()
    assert [json.loads(line)["chunk"] for line in lines] == list(range(1, chunks + 1))
    # The mock spends (chunks - 1) * interval between its first and last line; a gateway
    # that buffered the body would deliver everything at the end, at once.
    first, last = arrivals[0][0], arrivals[-1][0]
    assert len(arrivals) >= 3, f"{len(arrivals)} reads: {[round(t, 2) for t, _ in arrivals]}"
    assert last - first >= 0.6 * (chunks - 1) * interval, (
        f"all chunks arrived within {last - first:.2f} s: the body was buffered"
    )


@pytest.mark.host_process
def test_large_download_does_not_grow_gateway_memory(client: httpx.Client) -> None:
    gateway = GatewayProcesses.from_env()
    download_and_verify(client, 4 * MiB, timeout=TRANSFER_TIMEOUT)  # warm up
    with RssSampler(gateway) as rss:
        check = download_and_verify(client, LARGE, timeout=TRANSFER_TIMEOUT, rate=PACE)
    print(f"100 MiB download: {rss.describe()}")
    assert rss.error is None, f"RSS sampler failed: {rss.error!r}"
    assert check.size == LARGE, check
    assert check.first_mismatch is None, f"first wrong byte at offset {check.first_mismatch}"
    assert rss.growth < MAX_RSS_GROWTH, f"100 MiB download: {rss.describe()}"
    assert rss.samples >= 10, f"too few samples to trust the peak: {rss.describe()}"


@pytest.mark.host_process
def test_large_upload_does_not_grow_gateway_memory(client: httpx.Client) -> None:
    gateway = GatewayProcesses.from_env()
    upload(client, MultipartUpload(size=4 * MiB))  # warm up
    payload = MultipartUpload(size=LARGE)
    expected_sha256 = payload.sha256
    with RssSampler(gateway) as rss:
        file = upload(client, payload, rate=PACE)
    print(f"100 MiB upload: {rss.describe()}")
    assert rss.error is None, f"RSS sampler failed: {rss.error!r}"
    assert file["size"] == LARGE, file
    assert file["sha256"] == expected_sha256, file
    assert rss.growth < MAX_RSS_GROWTH, f"100 MiB upload: {rss.describe()}"
    assert rss.samples >= 10, f"too few samples to trust the peak: {rss.describe()}"
