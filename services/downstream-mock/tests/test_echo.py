from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import Message

from downstream_mock.app import create_app
from downstream_mock.routing import ANY_METHODS
from downstream_mock.settings import Settings


@pytest.mark.parametrize("method", [m for m in ANY_METHODS if m != "HEAD"])
async def test_every_method_is_echoed(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/echo/some/where")
    assert response.status_code == 200
    body = response.json()
    assert body["method"] == method
    assert body["path"] == "/echo/some/where"


async def test_head_has_headers_and_no_body(client: httpx.AsyncClient) -> None:
    response = await client.head("/echo")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) > 0


async def test_unknown_method_is_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.request("TRACE", "/echo")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"


async def test_report_fields(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/echo?b=2&a=1&a=&c=x%20y",
        content=b"hello",
        headers={"X-Thing": "one", "Content-Type": "text/plain"},
    )
    body = response.json()
    assert body == {
        "method": "POST",
        "path": "/echo",
        "raw_path": "/echo",
        "query": "b=2&a=1&a=&c=x%20y",
        "args": {"b": ["2"], "a": ["1", ""], "c": ["x y"]},
        "headers": body["headers"],
        "body_size": 5,
        "body_sha256": hashlib.sha256(b"hello").hexdigest(),
        "client": "127.0.0.1",
    }
    assert body["headers"]["x-thing"] == "one"
    assert body["headers"]["content-type"] == "text/plain"
    assert body["headers"]["content-length"] == "5"


async def test_repeated_headers_are_joined(client: httpx.AsyncClient) -> None:
    headers = [("X-Dup", "a"), ("x-dup", "b"), ("X-DUP", "c")]
    body = (await client.get("/echo", headers=headers)).json()
    assert body["headers"]["x-dup"] == "a, b, c"


async def test_empty_body_hash(client: httpx.AsyncClient) -> None:
    body = (await client.get("/echo")).json()
    assert body["body_size"] == 0
    assert body["body_sha256"] == hashlib.sha256(b"").hexdigest()


async def test_streamed_body_is_hashed_whole(client: httpx.AsyncClient) -> None:
    parts = [os.urandom(64 * 1024 + i) for i in range(5)]

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    body = (await client.put("/echo/upload", content=chunks())).json()
    whole = b"".join(parts)
    assert body["body_size"] == len(whole)
    assert body["body_sha256"] == hashlib.sha256(whole).hexdigest()


async def test_path_and_raw_path_as_received(settings: Settings) -> None:
    # httpx resolves `..` and cannot send a path the server would decode differently, so
    # the scope is built by hand, as uvicorn builds it from `GET /echo/a%2Fb/../c%20d`.
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/echo/a/b/../c d",
        "raw_path": b"/echo/a%2Fb/../c%20d",
        "root_path": "",
        "query_string": b"q=1",
        "headers": [(b"host", b"mock.test")],
        "client": ("192.0.2.7", 5000),
        "server": ("mock.test", 80),
    }
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    async with LifespanManager(create_app(settings)) as manager:
        await manager.app(scope, receive, send)
    assert messages[0]["status"] == 200
    body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
    assert body["raw_path"] == "/echo/a%2Fb/../c%20d"
    assert body["path"] == "/echo/a/b/../c d"
    assert body["query"] == "q=1"
    assert body["client"] == "192.0.2.7"
