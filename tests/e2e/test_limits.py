"""Request body limits: each route's max body, declared or streamed, is enforced with 413.

Guards that a body over the route's limit is refused with problem+json
`body-too-large` whether the client declares it (Content-Length, refused before the body
is read) or streams it chunked (counted as it arrives), and that a body of exactly the
limit still passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from .support import MiB, assert_problem, echo, raw_request

STRICT_LIMIT = 1024  # the `strict` route's max_body_bytes


def chunks(count: int, size: int) -> Iterator[bytes]:
    for index in range(count):
        yield bytes([index % 256]) * size


def test_body_of_exactly_the_limit_passes(client: httpx.Client) -> None:
    body = b"a" * STRICT_LIMIT
    seen = echo(client.post("/strict/echo", content=body))
    assert seen["body_size"] == STRICT_LIMIT
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_body_of_exactly_the_limit_passes(client: httpx.Client) -> None:
    seen = echo(client.post("/strict/echo", content=chunks(4, STRICT_LIMIT // 4)))
    assert seen["body_size"] == STRICT_LIMIT


@pytest.mark.parametrize("size", [STRICT_LIMIT + 1, 64 * 1024])
def test_declared_body_over_the_limit_is_413(client: httpx.Client, size: int) -> None:
    response = client.post("/strict/echo", content=b"b" * size)
    assert_problem(response, 413, "body-too-large")


@pytest.mark.parametrize(("count", "size"), [(5, 256), (1, STRICT_LIMIT + 1), (64, 1024)])
def test_chunked_body_over_the_limit_is_413(client: httpx.Client, count: int, size: int) -> None:
    response = client.post("/strict/echo", content=chunks(count, size))
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_problem(response, 413, "body-too-large")


@pytest.mark.parametrize(
    ("path", "declared"),
    [("/mock/upload", 200 * MiB), ("/scoped/x", 2 * MiB), ("/strict/echo", 2048)],
)
def test_declared_length_over_the_limit_is_refused_before_the_body(
    path: str, declared: int
) -> None:
    # Headers only: a gateway that waited for the body before refusing would time out.
    response = raw_request(
        "POST",
        path,
        headers={"Content-Length": str(declared), "Content-Type": "application/octet-stream"},
        timeout=5.0,
    )
    assert_problem(response, 413, "body-too-large")
