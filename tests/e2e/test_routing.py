"""Routing: which upstream a request reaches, with what path, method, query and body.

Guards the prefix strip (`/mock/echo` reaches the mock's `/echo`), matching on whole path
segments (`/mockecho` is no `/mock` route), matching again after normalisation, and that
the method, query, body and end-to-end headers arrive at the mock unchanged.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from .support import MiB, assert_problem, echo, raw_request


def test_prefix_is_stripped(client: httpx.Client) -> None:
    seen = echo(client.get("/mock/echo"))
    assert seen["path"] == "/echo"
    assert seen["method"] == "GET"


def test_path_below_the_prefix_is_kept(client: httpx.Client) -> None:
    seen = echo(client.get("/mock/echo/a/b/c.txt"))
    assert seen["path"] == "/echo/a/b/c.txt"
    assert seen["raw_path"] == "/echo/a/b/c.txt"


def test_trailing_slash_is_kept(client: httpx.Client) -> None:
    seen = echo(client.get("/mock/echo/a/"))
    assert seen["path"] == "/echo/a/"


def test_upstream_base_path_is_prepended(client: httpx.Client) -> None:
    seen = echo(client.get("/scoped/x/y"))
    assert seen["path"] == "/echo/scoped/x/y"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_passes_through(client: httpx.Client, method: str) -> None:
    seen = echo(client.request(method, "/mock/echo/method"))
    assert seen["method"] == method


def test_head_passes_through(client: httpx.Client) -> None:
    response = client.head("/mock/echo")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers.get("content-type", "").startswith("application/json")


def test_query_passes_through_verbatim(client: httpx.Client) -> None:
    query = "a=1&a=2&b=x%20y&c=%26%3D%2F&d=caf%C3%A9&plus=1%2B1&empty="
    response = client.get(httpx.URL(f"{client.base_url}/mock/echo").copy_with(query=query.encode()))
    seen = echo(response)
    assert seen["query"] == query
    assert seen["args"] == {
        "a": ["1", "2"],
        "b": ["x y"],
        "c": ["&=/"],
        "d": ["café"],
        "plus": ["1+1"],
        "empty": [""],
    }


def test_body_passes_through_intact(client: httpx.Client) -> None:
    body = os.urandom(MiB + 7)
    seen = echo(client.post("/mock/echo", content=body))
    assert seen["body_size"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["headers"]["content-length"] == str(len(body))


def test_chunked_body_passes_through_intact(client: httpx.Client) -> None:
    parts = [os.urandom(64 * 1024 + i) for i in range(8)]

    def generate() -> Iterator[bytes]:
        yield from parts

    seen = echo(client.put("/mock/echo", content=generate()))
    whole = b"".join(parts)
    assert seen["body_size"] == len(whole)
    assert seen["body_sha256"] == hashlib.sha256(whole).hexdigest()


def test_end_to_end_headers_pass_through(client: httpx.Client) -> None:
    marker = uuid.uuid4().hex
    headers = {
        "X-E2E-Marker": marker,
        "Accept": "application/json",
        "User-Agent": f"platform-e2e/{marker}",
        "Authorization": "Bearer e2e-token",
        "Cookie": "a=1; b=2",
        "Content-Type": "text/plain; charset=utf-8",
    }
    seen = echo(client.post("/mock/echo", headers=headers, content=b"hello"))
    for name, value in headers.items():
        assert seen["headers"].get(name.lower()) == value, (name, seen["headers"])


@pytest.mark.parametrize("path", ["/mockecho", "/mockery", "/mock-echo", "/scopedx", "/strict2/x"])
def test_prefix_matches_whole_segments_only(client: httpx.Client, path: str) -> None:
    # `/mockecho` with "/mock" stripped would be the mock's `/echo`: a 404 proves no match.
    assert_problem(client.get(path), 404)


@pytest.mark.parametrize(
    ("target", "expected_path"),
    [
        ("/mock/./echo/./a", "/echo/a"),
        ("//mock//echo///a", "/echo/a"),
        ("/mock/x/../echo/a", "/echo/a"),
        ("/other/../mock/echo/a", "/echo/a"),
        ("/mock/%65cho/a", "/echo/a"),
        ("/%6Dock/echo/a", "/echo/a"),
        ("/mock/../scoped/x", "/echo/scoped/x"),
        ("/mock/%2e%2e/scoped/x", "/echo/scoped/x"),
    ],
)
def test_route_is_matched_after_normalisation(target: str, expected_path: str) -> None:
    response = raw_request("GET", target)
    assert response.status_code == 200, (target, response.status_code, response.content[:300])
    seen = response.json()
    assert seen["path"] == expected_path, (target, seen["path"], seen["raw_path"])


def test_decoded_segments_are_forwarded_re_encoded(client: httpx.Client) -> None:
    seen = echo(client.get("/mock/echo/hello%20world/caf%C3%A9"))
    assert seen["path"] == "/echo/hello world/café"
    assert str(seen["raw_path"]).lower() == "/echo/hello%20world/caf%c3%a9"
