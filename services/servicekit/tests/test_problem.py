from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from starlette.types import Message

from servicekit.context import request_id_var
from servicekit.middleware import RequestIdMiddleware
from servicekit.problem import (
    PROBLEM_CONTENT_TYPE,
    ProblemResponse,
    install_problem_handlers,
    problem_body,
    send_problem,
)

ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
def request_id() -> Iterator[str]:
    token = request_id_var.set("req-1")
    yield "req-1"
    request_id_var.reset(token)


def test_problem_body_shape() -> None:
    body = json.loads(problem_body(404, "no route matches this path", slug="no-route"))
    assert body == {
        "type": "urn:platform:problem:no-route",
        "title": "Not Found",
        "status": 404,
        "detail": "no route matches this path",
        "request_id": None,
    }


def test_problem_body_defaults_title_and_extra(request_id: str) -> None:
    body = json.loads(problem_body(429, "slow down", title="Too many", extra={"limit": 5}))
    assert body["type"] == "about:blank"
    assert body["title"] == "Too many"
    assert body["limit"] == 5
    assert body["request_id"] == request_id


def test_problem_response(request_id: str) -> None:
    response = ProblemResponse(503, "draining", slug="not-ready", headers={"retry-after": "5"})
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-request-id"] == request_id
    assert json.loads(response.body)["detail"] == "draining"


def test_problem_response_without_a_request_id() -> None:
    response = ProblemResponse(400, "bad")
    assert "x-request-id" not in response.headers
    assert json.loads(response.body)["request_id"] is None


async def test_send_problem_over_raw_asgi(request_id: str) -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await send_problem(send, 504, "too slow", slug="upstream-timeout", headers=[(b"x-a", b"1")])

    start, body = sent
    assert start["type"] == "http.response.start"
    assert start["status"] == 504
    headers = dict(start["headers"])
    assert headers[b"content-type"] == PROBLEM_CONTENT_TYPE.encode()
    assert headers[b"x-a"] == b"1"
    assert body["type"] == "http.response.body"
    assert body.get("more_body", False) is False
    assert int(headers[b"content-length"]) == len(body["body"])
    parsed = json.loads(body["body"])
    assert parsed["type"] == "urn:platform:problem:upstream-timeout"
    assert parsed["status"] == 504
    assert parsed["request_id"] == request_id


def problem_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(418, detail={"why": "short and stout"}, headers={"x-tea": "yes"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return app


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_not_found(asgi_client: ClientFactory) -> None:
    async with asgi_client(problem_app()) as client:
        body = assert_problem(await client.get("/nowhere"), 404)
    assert body["type"] == "urn:platform:problem:not-found"


async def test_method_not_allowed(asgi_client: ClientFactory) -> None:
    async with asgi_client(problem_app()) as client:
        response = await client.delete("/items/1")
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET"


async def test_validation_error(asgi_client: ClientFactory) -> None:
    async with asgi_client(problem_app()) as client:
        body = assert_problem(await client.get("/items/abc"), 422)
    assert body["type"] == "urn:platform:problem:validation"
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors[0]["loc"] == ["path", "item_id"]


async def test_http_exception_with_structured_detail(asgi_client: ClientFactory) -> None:
    async with asgi_client(problem_app()) as client:
        response = await client.get("/teapot")
    body = assert_problem(response, 418)
    assert json.loads(str(body["detail"])) == {"why": "short and stout"}
    assert response.headers["x-tea"] == "yes"


async def test_unexpected_error_hides_internals(asgi_client: ClientFactory) -> None:
    async with asgi_client(problem_app(), raise_app_exceptions=False) as client:
        response = await client.get("/boom")
    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert body["type"] == "about:blank"
