"""Path traversal: nothing a client writes in the path gets a request out of its route.

`/scoped` forwards to the mock's `/echo/scoped`; every attack below aims at the mock's
`/info` or `/echo/escaped` instead. Each must be refused (400/404) or reach the mock
with a path still under `/echo/scoped` - decoded and raw. Requests go out through
`raw_request`, because httpx would resolve the dot segments itself (checked below).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from .support import assert_problem, echo, raw_request

SCOPED_UPSTREAM_PATH = "/echo/scoped"

ATTACKS = [
    "../info",
    "../../info",
    "../echo/escaped",
    "a/../../info",
    "a/b/../../../info",
    "./../info",
    "%2e%2e/info",
    "%2E%2e/info",
    "%2e%2E/%2e%2e/info",
    ".%2e/info",
    "%2e./info",
    "%2e%2e%2finfo",
    "%2e%2e%2Finfo",
    "..%2finfo",
    "..%2Finfo",
    "..%2f..%2finfo",
    "a%2f..%2f..%2finfo",
    "..%5cinfo",
    "..%5Cinfo",
    "..\\info",
    "..\\..\\info",
    "a\\..\\..\\info",
    "%252e%252e/info",
    "%252e%252e%252finfo",
    "..%252finfo",
    "..;/info",
    "a/..;/..;/info",
    ";/../info",
    "..;jsessionid=x/info",
    "//../info",
    "..//..//info",
    "%2f%2e%2e%2finfo",
    "..%00/info",
    "%00/../info",
    "%c0%ae%c0%ae/info",
    "%e0%80%ae%e0%80%ae/info",
    "..%c0%afinfo",
    "...//info",
    "%u002e%u002e/info",
    "%",
    "%zz/../info",
]


def assert_stays_in_scope(target: str, seen: dict[str, Any]) -> None:
    """The mock got a path under /echo/scoped that no upstream could read as climbing out.

    Under the prefix is not enough: `/echo/scoped/../info` starts right but is `/info` to
    any server that resolves dot segments, so none may be forwarded, decoded or raw, and
    neither may an encoded slash or backslash.
    """
    for key in ("path", "raw_path"):
        path = seen[key]
        assert isinstance(path, str), seen
        assert path == SCOPED_UPSTREAM_PATH or path.startswith(f"{SCOPED_UPSTREAM_PATH}/"), (
            f"{target} reached {key} {path!r}"
        )
        segments = path.split("/")
        assert "." not in segments, f"{target} forwarded a dot segment: {key} {path!r}"
        assert ".." not in segments, f"{target} forwarded a dot segment: {key} {path!r}"
    raw = seen["raw_path"].lower()
    for sneaky in ("%2f", "%5c", "\\", "%2e"):
        assert sneaky not in raw, f"{target} forwarded {sneaky!r}: raw_path {raw!r}"


@pytest.mark.parametrize("attack", ATTACKS)
def test_traversal_stays_under_the_route(attack: str) -> None:
    target = f"/scoped/{attack}"
    response = raw_request("GET", target)
    if response.status_code in (400, 404):
        return  # refused: by the gateway's path check, its router or its HTTP server
    assert response.status_code == 200, (
        f"{target}: {response.status_code} {response.content[:300]!r}"
    )
    assert_stays_in_scope(target, echo(response))


@pytest.mark.parametrize(
    "target",
    [
        "/scoped/a%2fb",
        "/scoped/a%2Fb",
        "/scoped/a%5cb",
        "/scoped/a%5Cb",
        "/scoped/a%00b",
        "/scoped/../../info",
        "/mock/../../echo",
        "/..",
        "/mock/%2e%2e/%2e%2e/echo",
    ],
)
def test_ambiguous_paths_are_400_bad_path(target: str) -> None:
    assert_problem(raw_request("GET", target), 400, "bad-path")


def test_dot_segments_inside_the_route_resolve_within_it() -> None:
    seen = echo(raw_request("GET", "/scoped/a/b/../c/./d"))
    assert seen["path"] == f"{SCOPED_UPSTREAM_PATH}/a/c/d"


def test_climbing_out_of_the_route_is_routed_afresh_never_forwarded() -> None:
    # /scoped/../info is /info after normalisation: no route, so the gateway's 404.
    body = assert_problem(raw_request("GET", "/scoped/../info"), 404)
    assert body["type"] != "urn:platform:problem:requested-status", body


def test_double_encoded_slash_stays_one_literal_segment() -> None:
    seen = echo(raw_request("GET", "/scoped/a%252fb"))
    assert seen["path"] == f"{SCOPED_UPSTREAM_PATH}/a%2fb", seen
    assert str(seen["raw_path"]).lower() == f"{SCOPED_UPSTREAM_PATH}/a%252fb", seen


def test_raw_request_sends_the_target_verbatim() -> None:
    """The technique itself: httpx would send `/x`; raw_request must send the dots."""
    targets = ["/scoped/../x", "/scoped/%2e%2e/x", "/scoped/..\\x", "//scoped//./x;y"]
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5.0)
        port = server.getsockname()[1]

        def serve() -> None:
            for _ in targets:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(5.0)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        piece = conn.recv(4096)
                        if not piece:
                            break
                        data += piece
                    received.append(data.split(b"\r\n", 1)[0])
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for target in targets:
            response = raw_request("GET", target, base_url=f"http://127.0.0.1:{port}")
            assert response.status_code == 204
        thread.join(timeout=5)
    assert received == [f"GET {t} HTTP/1.1".encode() for t in targets]
