"""Helpers shared by the mock's tests: a client on a running app, and problem checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

PROBLEM_CONTENT_TYPE = "application/problem+json"


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client on `app` with its lifespan running, as under a real server."""
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://mock.test"
        ) as client,
    ):
        yield client


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> Any:
    """Check `response` is a problem+json with `status` (and type `slug`); return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["status"] == status
    assert body["detail"]
    if slug is not None:
        assert body["type"] == f"urn:platform:problem:{slug}"
    return body
