"""Memory check: a large download and a large upload through a proxy, RSS watched.

A proxy that streams holds a few chunks per request whatever the body size; one that
buffers grows by the body. The client here is plain `http.client`, so nothing on the
client side hides a proxy that waits for the whole body before sending any of it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

from procs import RssSampler, Service, cpu_delta, cpu_seconds

CHUNK = 64 * 1024
MIB = 1024 * 1024
TIMEOUT = 60.0
BOUNDARY = "bench-boundary-7MA4YWxkTrZu0gW"


@dataclass(frozen=True)
class StreamResult:
    name: str
    size: int
    seconds: float
    rss_before: int  # the proxy's workers, just before the request
    rss_peak: int  # their highest sample during it
    proxy_cpu: float  # seconds, master + workers
    ok: bool
    detail: str

    @property
    def rss_growth(self) -> int:
        return max(0, self.rss_peak - self.rss_before)

    @property
    def mib_per_s(self) -> float:
        return self.size / MIB / self.seconds if self.seconds else 0.0


def _pattern_block() -> bytes:
    return bytes(i % 251 for i in range(CHUNK))


def download(proxy: Service, size: int, *, rate: float | None = None) -> StreamResult:
    """GET /mock/bytes/<size>, read and counted; `rate` (bytes/s) paces a slow client."""
    name = "download" if rate is None else f"download, client at {rate / MIB:.0f} MiB/s"
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
    cpu_before = cpu_seconds(proxy.group())
    with RssSampler(proxy, workers_only=True) as rss:
        start = time.monotonic()
        try:
            conn.request("GET", f"/mock/bytes/{size}")
            response = conn.getresponse()
            received = 0
            while chunk := response.read(CHUNK):
                received += len(chunk)
                if rate is not None:
                    ahead = received / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                if time.monotonic() - start > TIMEOUT:
                    break
            status = response.status
        finally:
            conn.close()
        seconds = time.monotonic() - start
    ok = status == 200 and received == size
    return StreamResult(
        name=name,
        size=size,
        seconds=seconds,
        rss_before=rss.before,
        rss_peak=rss.peak,
        proxy_cpu=cpu_delta(cpu_before, cpu_seconds(proxy.group())),
        ok=ok,
        detail=f"status {status}, {received} of {size} bytes",
    )


def _multipart(size: int) -> tuple[bytes, bytes, Iterator[bytes]]:
    head = (
        f"--{BOUNDARY}\r\n"
        'content-disposition: form-data; name="file"; filename="big.bin"\r\n'
        "content-type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = _pattern_block()

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < size:
            piece = block[: min(CHUNK, size - sent)]
            sent += len(piece)
            yield piece
        yield tail

    return head, tail, body()


def _expected_sha256(size: int) -> str:
    block = _pattern_block()
    digest = hashlib.sha256()
    for _ in range(size // CHUNK):
        digest.update(block)
    digest.update(block[: size % CHUNK])
    return digest.hexdigest()


def upload(proxy: Service, size: int) -> StreamResult:
    """POST a multipart body of `size` file bytes to /mock/upload, sent as it is made.

    The mock hashes what it receives; the check compares its size and sha256 with ours.
    """
    expected = _expected_sha256(size)
    head, tail, chunks = _multipart(size)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
    cpu_before = cpu_seconds(proxy.group())
    with RssSampler(proxy, workers_only=True) as rss:
        start = time.monotonic()
        try:
            conn.putrequest("POST", "/mock/upload")
            conn.putheader("content-type", f"multipart/form-data; boundary={BOUNDARY}")
            conn.putheader("content-length", str(len(head) + size + len(tail)))
            conn.endheaders()
            for chunk in chunks:
                conn.send(chunk)
            response = conn.getresponse()
            status = response.status
            answer = response.read(1024 * 1024)
        finally:
            conn.close()
        seconds = time.monotonic() - start
    try:
        files = json.loads(answer)["files"]
        got_size, got_sha = files[0]["size"], files[0]["sha256"]
    except (ValueError, KeyError, IndexError, TypeError):
        got_size, got_sha = None, None
    ok = status == 200 and got_size == size and got_sha == expected
    return StreamResult(
        name="upload (multipart)",
        size=size,
        seconds=seconds,
        rss_before=rss.before,
        rss_peak=rss.peak,
        proxy_cpu=cpu_delta(cpu_before, cpu_seconds(proxy.group())),
        ok=ok,
        detail=f"status {status}, mock saw {got_size} bytes, sha256 "
        + ("matches" if got_sha == expected else f"differs ({got_sha})"),
    )
