"""RFC 9457 problem details: the one shape of every error a service makes itself.

`problem_body` builds the JSON, `ProblemResponse` serves it from FastAPI handlers and
`send_problem` from raw ASGI code such as the gateway's proxy path. Both add the
request id, so an operator can find the matching log line from any error a client saw.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Send

from servicekit.context import request_id_var

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:platform:problem:"

RawHeaders = Iterable[tuple[bytes, bytes]]


def problem_type(slug: str) -> str:
    """A stable, documented identifier for one kind of problem, e.g. `...:upstream-timeout`."""
    return f"{PROBLEM_TYPE_PREFIX}{slug}"


def problem_body(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "type": problem_type(slug) if slug else "about:blank",
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
        "request_id": request_id_var.get(),
    }
    if extra:
        body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # 520, 599 and other codes without a registered name
        return f"HTTP {status}"


class ProblemResponse(Response):
    media_type = PROBLEM_CONTENT_TYPE

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        all_headers = dict(headers or {})
        request_id = request_id_var.get()
        if request_id is not None:
            all_headers.setdefault("x-request-id", request_id)
        super().__init__(
            problem_body(status, detail, slug=slug, title=title, extra=extra),
            status_code=status,
            headers=all_headers,
        )


async def send_problem(
    send: Send,
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: RawHeaders = (),
) -> None:
    """Send a whole problem response on a raw ASGI `send`."""
    body = problem_body(status, detail, slug=slug)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_problem_handlers(app: FastAPI) -> None:
    """Make FastAPI's own errors (404, 405, 422, 500) problem+json too."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        slug = "not-found" if exc.status_code == 404 else None
        return ProblemResponse(exc.status_code, detail, slug=slug, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
            for err in exc.errors()
        ]
        return ProblemResponse(
            422,
            "the request did not validate",
            slug="validation",
            extra={"errors": errors},
        )

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # ServerErrorMiddleware has already logged the traceback.
        return ProblemResponse(500, "unexpected error; see the logs for this request id")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
