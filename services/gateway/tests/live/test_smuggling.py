"""Smuggling, CR/LF injection and slow clients against the real gateway, with raw sockets.

The gateway runs under gunicorn (httptools, the guarded protocol, the dispatcher's
checks) in front of a recording upstream stub with an independent parser (h11). Each
attack must be refused, and the stub must never see it, nor any request hidden in it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Service, StubUpstream, start_gateway

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_HEADER_BYTES = 4096


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, stub_upstream: StubUpstream
) -> Iterator[Service]:
    tmp: Path = tmp_path_factory.mktemp("smuggling")
    service = start_gateway(
        tmp,
        f"""
        routes:
          - name: stub
            prefix: /stub
            upstream: http://127.0.0.1:{stub_upstream.port}
            timeout: {{connect: 1, read: 5, total: 10}}
        """,
        GATEWAY_DRAIN_DELAY="0",
        GATEWAY_CLIENT_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        GATEWAY_CLIENT_BODY_TIMEOUT=str(BODY_TIMEOUT),
        GATEWAY_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        GATEWAY_MAX_HEADER_COUNT="20",
    )
    yield service
    service.kill()


def exchange(port: int, raw: bytes, *, wait: float = 3.0) -> bytes:
    """Send `raw`, then read until the gateway closes the connection or `wait` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(raw)
        received = b""
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response in `raw` (Content-Length framed, as all of these are)."""
    found = []
    while raw.startswith(b"HTTP/1.1 "):
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def only_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    found = responses(raw)
    assert len(found) == 1, raw[:500]
    return found[0]


def problem(body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def request(target: str, *headers: str, body: bytes = b"", version: str = "1.1") -> bytes:
    head = "\r\n".join([f"POST {target} HTTP/{version}", "Host: gw", *headers])
    return head.encode("latin-1") + b"\r\n\r\n" + body


SMUGGLED = b"GET /stub/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
CHUNKED_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED

# Each refused with 400 by the parser or the dispatcher; none may reach the upstream.
ATTACKS: dict[str, bytes] = {
    "cl-te": request(
        "/stub/cl-te",
        f"Content-Length: {len(CHUNKED_THEN_SMUGGLED)}",
        "Transfer-Encoding: chunked",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "te-cl": request(
        "/stub/te-cl",
        "Transfer-Encoding: chunked",
        "Content-Length: 4",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "te-xchunked": request(
        "/stub/te-xchunked", "Transfer-Encoding: xchunked", body=CHUNKED_THEN_SMUGGLED
    ),
    "te-xchunked-and-cl": request(
        "/stub/te-xchunked-cl",
        "Content-Length: 5",
        "Transfer-Encoding: xchunked",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "te-space-chunked-and-cl": request(
        "/stub/te-space-cl",
        "Content-Length: 5",
        "Transfer-Encoding:  chunked",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "te-name-space-colon": request(
        "/stub/te-name-space",
        "Content-Length: 5",
        "Transfer-Encoding : chunked",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "te-duplicated": request(
        "/stub/te-dup",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "te-chunked-identity": request(
        "/stub/te-chunked-identity",
        "Transfer-Encoding: chunked, identity",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "te-vertical-tab": request(
        "/stub/te-vtab", "Transfer-Encoding: \x0bchunked", body=CHUNKED_THEN_SMUGGLED
    ),
    "te-obs-fold": request(
        "/stub/te-fold", "X-A: a", "Transfer-Encoding:\r\n chunked", body=CHUNKED_THEN_SMUGGLED
    ),
    "te-on-http-1.0": request(
        "/stub/te-http10",
        "Transfer-Encoding: chunked",
        body=CHUNKED_THEN_SMUGGLED,
        version="1.0",
    ),
    "cl-cl-different": request(
        "/stub/cl-cl", "Content-Length: 4", "Content-Length: 40", body=b"abcd" + SMUGGLED
    ),
    "cl-cl-same": request(
        "/stub/cl-cl-same", "Content-Length: 4", "Content-Length: 4", body=b"abcd"
    ),
    "cl-list": request("/stub/cl-list", "Content-Length: 4, 40", body=b"abcd" + SMUGGLED),
    "cl-plus": request("/stub/cl-plus", "Content-Length: +4", body=b"abcd"),
    "cl-trailing-space": request("/stub/cl-space", "Content-Length: 4 ", body=b"abcd"),
    "bare-cr-in-value": request("/stub/bare-cr", "X-A: a\rX-Injected: 1"),
    "bare-lf-in-value": request("/stub/bare-lf", "X-A: a\nX-Injected: 1"),
    "nul-in-value": request("/stub/nul", "X-A: a\x00b"),
    "obs-fold": request("/stub/obs-fold", "X-A: a", " folded"),
    "leading-space-header": b"POST /stub/leading HTTP/1.1\r\n Host: gw\r\n\r\n",
    "lf-only-lines": b"POST /stub/lf-only HTTP/1.1\nHost: gw\n\n",
    "two-hosts": request("/stub/two-hosts", "Host: other"),
    "method-lower-case": b"get /stub/lower HTTP/1.1\r\nHost: gw\r\n\r\n",
    "method-not-a-token": b"G@T /stub/at HTTP/1.1\r\nHost: gw\r\n\r\n",
    "method-unknown": b"FOO /stub/foo HTTP/1.1\r\nHost: gw\r\n\r\n",
    "chunk-size-lf-only": request(
        "/stub/chunk-lf", "Transfer-Encoding: chunked", body=b"4\nabcd\r\n" + CHUNKED_THEN_SMUGGLED
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_is_refused_and_never_reaches_the_upstream(
    gateway: Service, stub_upstream: StubUpstream, name: str
) -> None:
    before = len(stub_upstream.seen)
    raw = exchange(gateway.port, ATTACKS[name])
    found = responses(raw)
    assert found, f"{name}: no response at all"
    status, _, body = found[0]
    assert status == 400, raw[:500]
    assert problem(body)["status"] == 400
    assert len(found) == 1, f"{name}: the hidden request was answered too: {raw!r}"
    time.sleep(0.05)  # anything forwarded would have been recorded by now
    complete = [s.path for s in stub_upstream.seen[before:] if s.complete]
    assert complete == [], f"{name} reached the upstream: {complete}"
    assert "/smuggled" not in stub_upstream.paths()


def test_a_request_hidden_in_a_body_stays_in_the_body(
    gateway: Service, stub_upstream: StubUpstream
) -> None:
    # The gateway re-frames every body it forwards: what the client put inside one
    # arrives upstream as body bytes, never as a request of its own.
    chunked_body = b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"
    for target, raw in (
        ("/in-cl-body", request("/stub/in-cl-body", f"Content-Length: {len(SMUGGLED)}") + SMUGGLED),
        (
            "/in-chunked-body",
            request("/stub/in-chunked-body", "Transfer-Encoding: chunked", body=chunked_body),
        ),
    ):
        status, _, _ = only_response(exchange(gateway.port, raw, wait=1.0))
        assert status == 200
        seen = [s for s in stub_upstream.seen if s.path == target]
        assert len(seen) == 1
        assert seen[0].body == SMUGGLED
        framing = [n for n, _ in seen[0].headers if n in (b"content-length", b"transfer-encoding")]
        assert len(framing) == 1, seen[0].headers  # never both
    assert "/smuggled" not in stub_upstream.paths()


def test_unusual_but_valid_chunked_framing_is_forwarded_once(
    gateway: Service, stub_upstream: StubUpstream
) -> None:
    for target, te in (
        ("/stub/te-ows", "Transfer-Encoding:   chunked  "),
        ("/stub/te-identity-chunked", "Transfer-Encoding: identity, chunked"),
    ):
        raw = request(target, te, body=b"4\r\nabcd\r\n0\r\n\r\n")
        status, _, _ = only_response(exchange(gateway.port, raw, wait=1.0))
        assert status == 200
        seen = [s for s in stub_upstream.seen if s.path == target.removeprefix("/stub")]
        assert [s.body for s in seen] == [b"abcd"]


def test_a_slow_head_gets_408(gateway: Service, stub_upstream: StubUpstream) -> None:
    before = len(stub_upstream.seen)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        started = time.monotonic()
        received = b""
        for byte in b"GET /stub/slowloris HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - started > HEADER_TIMEOUT + 2:
                break
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
        took = time.monotonic() - started
    status, _, body = only_response(received)
    assert status == 408
    assert problem(body)["type"] == "urn:platform:problem:request-head-timeout"
    assert HEADER_TIMEOUT <= took < HEADER_TIMEOUT + 1.5
    assert len(stub_upstream.seen) == before


def test_a_huge_header_is_cut_off_with_431(gateway: Service, stub_upstream: StubUpstream) -> None:
    before = len(stub_upstream.seen)
    raw = request("/stub/huge", "X-Big: " + "a" * (1024 * 1024))
    status, _, body = only_response(exchange(gateway.port, raw))
    assert status == 431
    assert problem(body)["type"] == "urn:platform:problem:headers-too-large"
    assert len(stub_upstream.seen) == before


def test_headers_a_little_over_the_limit_get_the_dispatcher_s_431(
    gateway: Service, stub_upstream: StubUpstream
) -> None:
    before = len(stub_upstream.seen)
    raw = request("/stub/over", "X-Big: " + "a" * MAX_HEADER_BYTES, "Content-Length: 0")
    status, headers, body = only_response(exchange(gateway.port, raw))
    assert status == 431
    assert headers["x-request-id"] == problem(body)["request_id"]  # logged, traceable
    assert len(stub_upstream.seen) == before


def test_a_body_that_stops_arriving_gets_408(gateway: Service, stub_upstream: StubUpstream) -> None:
    before = len(stub_upstream.seen)
    started = time.monotonic()
    raw = exchange(
        gateway.port, request("/stub/slow-body", "Content-Length: 10", body=b"12345"), wait=5
    )
    took = time.monotonic() - started
    status, headers, body = only_response(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert problem(body)["type"] == "urn:platform:problem:body-timeout"
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + 1.5
    assert len(stub_upstream.seen) == before  # a small body is read whole before forwarding


def test_a_streamed_body_that_stops_arriving_gets_408(
    gateway: Service, stub_upstream: StubUpstream
) -> None:
    raw = exchange(
        gateway.port,
        request("/stub/slow-stream", "Transfer-Encoding: chunked", body=b"5\r\n12345\r\n"),
        wait=5,
    )
    status, _, body = only_response(raw)
    assert (status, problem(body)["type"]) == (408, "urn:platform:problem:body-timeout")
    assert not any(s.complete for s in stub_upstream.seen if s.path == "/slow-stream")
