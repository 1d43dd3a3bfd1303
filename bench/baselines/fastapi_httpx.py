"""Baseline: a FastAPI route proxying through one shared `httpx.AsyncClient`.

The pattern most FastAPI proxy tutorials end up with once they stop creating a client
per request: the client is built once in the lifespan, the upstream body is streamed
back (`send(..., stream=True)` and a guaranteed `aclose()`), hop-by-hop headers are
dropped. It has no access log, no request id and no metrics, so it does less work per
request than the gateway; the gateway must still be 10x faster.

    BASELINE_UPSTREAM=http://127.0.0.1:8081 gunicorn -k uvicorn_worker.UvicornWorker \
        --pythonpath bench/baselines 'fastapi_httpx:create_app()'
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(upstream: str | None = None) -> FastAPI:
    base = (upstream or os.environ["BASELINE_UPSTREAM"]).rstrip("/")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # Pool limits above the benchmark's concurrency, so no request waits for a slot.
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
            yield {"client": client}

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.api_route("/mock/{path:path}", methods=METHODS)
    async def proxy(path: str, request: Request) -> StreamingResponse:
        client: httpx.AsyncClient = request.state.client
        headers = [(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP]
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        upstream_request = client.build_request(
            request.method,
            "/" + path,
            params=request.query_params,
            headers=headers,
            content=request.stream() if has_body else None,
        )
        response = await client.send(upstream_request, stream=True)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k not in HOP_BY_HOP},
            background=BackgroundTask(response.aclose),
        )

    return app
