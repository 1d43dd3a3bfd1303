"""`/echo`: shows a client exactly what reached the mock, after the gateway.

The path is reported twice: `path` as the server decoded it and `raw_path` as the bytes
on the request line, so a gateway test can prove that `..` segments and encoded slashes
never got outside a route's prefix. The body is hashed while it streams in and never
held whole, so echoing a large upload costs no memory.
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from downstream_mock.routing import add_any_method_route

DESCRIPTION = (
    "Any method. JSON of the method, the path as received (`path` decoded, `raw_path` as "
    "sent), the raw query and its parsed `args`, the headers (repeats joined with `, `), "
    "the body's size and sha256, and the client address."
)


class EchoResult(BaseModel):
    method: str
    path: str = Field(description="the path as the server decoded it")
    raw_path: str | None = Field(description="the path bytes on the request line, as latin-1")
    query: str = Field(description="the raw query string")
    args: dict[str, list[str]]
    headers: dict[str, str] = Field(description="lowercase name to value; repeats joined")
    body_size: int
    body_sha256: str
    client: str | None


async def echo(request: Request) -> EchoResult:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    scope = request.scope
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    query = scope.get("query_string", b"").decode("latin-1")
    raw_path = scope.get("raw_path")
    return EchoResult(
        method=request.method,
        path=scope["path"],
        raw_path=raw_path.decode("latin-1") if raw_path is not None else None,
        query=query,
        args=parse_qs(query, keep_blank_values=True),
        headers=headers,
        body_size=size,
        body_sha256=digest.hexdigest(),
        client=request.client.host if request.client else None,
    )


async def echo_path(path: str, request: Request) -> EchoResult:
    # `path` is only declared for the OpenAPI document; the echo reads the raw scope.
    return await echo(request)


def echo_router() -> APIRouter:
    router = APIRouter(tags=["echo"])
    add_any_method_route(
        router,
        "/echo",
        echo,
        operation_id="echo",
        summary="Echo the request.",
        description=DESCRIPTION,
    )
    add_any_method_route(
        router,
        "/echo/{path:path}",
        echo_path,
        operation_id="echo_path",
        summary="Echo the request, with any path below /echo.",
        description=DESCRIPTION,
    )
    return router
