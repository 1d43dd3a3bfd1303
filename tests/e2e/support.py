"""What several e2e modules share: the target, raw requests, problem checks, host probes.

Nothing here imports service code. The gateway is known only by `E2E_BASE_URL` and, for
the tests marked `host_process`, by the PID of its gunicorn master in `E2E_GATEWAY_PID`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import httpx
import psutil
import pytest

BASE_URL = os.environ.get("E2E_BASE_URL", "http://127.0.0.1:8080").rstrip("/")
GATEWAY_PID_ENV = "E2E_GATEWAY_PID"

# Every call has a bound; tests that need a longer or a shorter one pass their own.
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)

MiB = 1024 * 1024
PROBLEM_CONTENT_TYPE = "application/problem+json"
REQUIRED_PROBLEM_FIELDS = frozenset({"type", "title", "status", "detail", "request_id"})
# The gateway's rule for a client's X-Request-ID worth keeping.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@=+/\-]{1,128}")


def problem_type(slug: str) -> str:
    return f"urn:platform:problem:{slug}"


# Problem details


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> httpx.Headers: ...

    def json(self) -> Any: ...


def media_type(response: _Response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def assert_problem(response: _Response, status: int, slug: str | None = None) -> dict[str, Any]:
    """`response` is RFC 9457 problem+json with `status` (and type `slug`); returns the body.

    The body's request_id must be the X-Request-ID on the response, so a client can quote
    either to find the gateway's log line.
    """
    assert response.status_code == status, (
        f"expected {status}, got {response.status_code}: {_preview(response)}"
    )
    assert media_type(response) == PROBLEM_CONTENT_TYPE, (
        f"content-type {response.headers.get('content-type')!r}: {_preview(response)}"
    )
    body = response.json()
    assert isinstance(body, dict), body
    missing = REQUIRED_PROBLEM_FIELDS - body.keys()
    assert not missing, f"problem body lacks {sorted(missing)}: {body}"
    assert body["status"] == status, body
    if slug is not None:
        assert body["type"] == problem_type(slug), body
    assert body["request_id"], body
    assert body["request_id"] == response.headers.get("x-request-id"), (
        f"request_id {body['request_id']!r} != X-Request-ID "
        f"{response.headers.get('x-request-id')!r}"
    )
    return body


def echo(response: _Response) -> dict[str, Any]:
    """The mock's /echo report in `response`, after checking it is one."""
    assert response.status_code == 200, f"{response.status_code}: {_preview(response)}"
    body = response.json()
    assert isinstance(body, dict), body
    assert {"path", "raw_path", "headers"} <= body.keys(), body
    return body


def _preview(response: _Response) -> str:
    try:
        return json.dumps(response.json())[:500]
    except ValueError:
        return "<not JSON>"


# Raw requests


@dataclass(frozen=True)
class RawResponse:
    """What `raw_request` got back; shaped like the parts of httpx.Response tests use."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def raw_request(
    method: str,
    target: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    base_url: str = BASE_URL,
) -> RawResponse:
    """Send `target` on the request line exactly as given.

    httpx resolves `.` and `..` in every URL it sends, raw_path included, so a test of the
    gateway's own path handling would test httpx instead. http.client writes the target
    verbatim (it only refuses control bytes and spaces, which no test needs raw).
    """
    url = httpx.URL(base_url)
    connection_class = (
        http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    )
    conn = connection_class(url.host, url.port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        content = response.read()
        return RawResponse(response.status, httpx.Headers(response.getheaders()), content)
    finally:
        conn.close()


# Bodies


PATTERN_PERIOD = 251
_PATTERN_BLOCK = bytes(range(PATTERN_PERIOD)) * (MiB // PATTERN_PERIOD + 2)


def pattern_bytes(offset: int, length: int) -> bytes:
    """The mock's /bytes body at [offset, offset + length): byte i is i % 251."""
    start = offset % PATTERN_PERIOD
    if start + length <= len(_PATTERN_BLOCK):
        return _PATTERN_BLOCK[start : start + length]
    repeats = (start + length) // PATTERN_PERIOD + 1
    return (bytes(range(PATTERN_PERIOD)) * repeats)[start : start + length]


class Pace:
    """Holds a transfer to at most `rate` bytes per second (None: as fast as it goes).

    The memory tests pace their transfers so the sampler sees enough of them, and so that a
    gateway reading ahead of a slow client, instead of applying backpressure, shows up.
    """

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.started = time.monotonic()

    def account(self, transferred: int) -> None:
        if self.rate is None:
            return
        ahead = transferred / self.rate - (time.monotonic() - self.started)
        if ahead > 0.005:
            time.sleep(ahead)


@dataclass
class DownloadCheck:
    size: int = 0
    reads: int = 0
    first_mismatch: int | None = None


def download_and_verify(
    client: httpx.Client, n: int, *, timeout: httpx.Timeout, rate: float | None = None
) -> DownloadCheck:
    """Stream `/mock/bytes/n`, checking every byte against the pattern as it arrives.

    Nothing is kept but a counter, so the test process stays small whatever `n` is.
    """
    check = DownloadCheck()
    pace = Pace(rate)
    with client.stream("GET", f"/mock/bytes/{n}", timeout=timeout) as response:
        assert response.status_code == 200, response.read()[:500]
        assert response.headers.get("content-length") in (None, str(n)), response.headers
        for chunk in response.iter_bytes():
            if check.first_mismatch is None:
                expected = pattern_bytes(check.size, len(chunk))
                if chunk != expected:
                    pairs = zip(chunk, expected, strict=True)
                    check.first_mismatch = check.size + next(
                        i for i, (got, want) in enumerate(pairs) if got != want
                    )
            check.size += len(chunk)
            check.reads += 1
            pace.account(check.size)
    return check


@dataclass
class MultipartUpload:
    """One file field, `size` bytes, as a streamed multipart body with a known sha256.

    The content is one random 1 MiB block, each copy stamped with its index: random, so a
    body mangled in transit cannot hash the same; stamped, so a dropped, repeated or
    reordered block cannot either; one block, so generating 100 MiB costs nothing.
    """

    size: int
    field_name: str = "file"
    filename: str = "e2e.bin"
    boundary: str = field(default_factory=lambda: f"e2e-{os.urandom(12).hex()}")
    _block: bytes = field(default_factory=lambda: os.urandom(MiB), repr=False)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self._file_chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def _file_chunks(self) -> Iterator[bytes]:
        remaining, index = self.size, 0
        while remaining > 0:
            chunk = (index.to_bytes(8, "big") + self._block[8:])[: min(remaining, MiB)]
            remaining -= len(chunk)
            index += 1
            yield chunk

    def body(self, *, rate: float | None = None) -> Iterator[bytes]:
        """The multipart body, generated as it is sent (httpx sends it chunked)."""
        yield (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{self.field_name}"; '
            f'filename="{self.filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        pace = Pace(rate)
        sent = 0
        for chunk in self._file_chunks():
            yield chunk
            sent += len(chunk)
            pace.account(sent)
        yield f"\r\n--{self.boundary}--\r\n".encode()


# The gateway's processes (tests marked host_process only)


def require_gateway_pid() -> int:
    """The gateway master's PID from the environment; fails the test when it is missing."""
    value = os.environ.get(GATEWAY_PID_ENV, "").strip()
    if not value:
        pytest.fail(
            f"{GATEWAY_PID_ENV} is not set: this test reads /proc of the gateway's gunicorn "
            "processes and needs its master PID (scripts/e2e-local.sh sets it). Against a "
            'target without host access, deselect these tests with -m "not host_process".',
            pytrace=False,
        )
    if not value.isdigit():
        pytest.fail(f"{GATEWAY_PID_ENV}={value!r} is not a PID", pytrace=False)
    return int(value)


@dataclass(frozen=True)
class UpstreamConnection:
    pid: int
    local: str
    remote: str
    status: str


class GatewayProcesses:
    """The gunicorn master given by E2E_GATEWAY_PID and its workers, seen through psutil."""

    def __init__(self, pid: int) -> None:
        try:
            self.master = psutil.Process(pid)
        except psutil.NoSuchProcess:
            pytest.fail(f"{GATEWAY_PID_ENV}={pid}: no such process", pytrace=False)

    @classmethod
    def from_env(cls) -> GatewayProcesses:
        gateway = cls(require_gateway_pid())
        assert gateway.workers(), f"gateway master {gateway.master.pid} has no worker processes"
        return gateway

    def workers(self) -> list[psutil.Process]:
        return self.master.children(recursive=False)

    def worker_rss(self) -> int:
        """Total resident memory of the workers, in bytes; workers gone meanwhile count 0."""
        total = 0
        for worker in self.workers():
            try:
                total += worker.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def listen_ports(self) -> set[int]:
        ports = set()
        for process in [self.master, *self.workers()]:
            try:
                connections = process.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            ports.update(c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN)
        assert ports, f"gateway master {self.master.pid} has no listening TCP socket"
        return ports

    def upstream_connections(self) -> list[UpstreamConnection]:
        """TCP connections of the workers that are not client connections to the gateway.

        A client connection has the listen port as its local port; everything else a
        worker holds is one it opened, i.e. towards an upstream.
        """
        listen = self.listen_ports()
        found: list[UpstreamConnection] = []
        for worker in self.workers():
            try:
                connections = worker.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            for c in connections:
                if not c.raddr or c.laddr.port in listen:
                    continue
                found.append(
                    UpstreamConnection(
                        pid=worker.pid,
                        local=f"{c.laddr.ip}:{c.laddr.port}",
                        remote=f"{c.raddr.ip}:{c.raddr.port}",
                        status=c.status,
                    )
                )
        return found


class RssSampler:
    """Samples the workers' total RSS in a background thread and keeps the peak.

    Use as a context manager around a transfer; `baseline` is taken on entry.
    """

    def __init__(self, gateway: GatewayProcesses, *, interval: float = 0.05) -> None:
        self.gateway = gateway
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = self.gateway.worker_rss()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()  # the moment the transfer ended counts too

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._sample()
        except BaseException as exc:  # reported by the test, never lost in the thread
            self.error = exc

    def _sample(self) -> None:
        rss = self.gateway.worker_rss()
        self.samples += 1
        self.peak = max(self.peak, rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def describe(self) -> str:
        return (
            f"gateway workers' RSS: baseline {self.baseline / MiB:.1f} MiB, "
            f"peak {self.peak / MiB:.1f} MiB, growth {self.growth / MiB:.1f} MiB "
            f"({self.samples} samples every {self.interval * 1000:.0f} ms)"
        )


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate()` until it is true or `timeout` seconds passed; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
