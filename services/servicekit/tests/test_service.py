from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from servicekit.health import HealthState
from servicekit.problem import PROBLEM_CONTENT_TYPE
from servicekit.service import new_service_app
from servicekit.settings import ServiceSettings

ClientFactory = Callable[..., httpx.AsyncClient]
Capture = Callable[[str], list[logging.LogRecord]]


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")


class AnswersProxyPaths:
    """Stands in for the gateway's dispatcher: answers /proxied/* without FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/proxied/"):
            scope["servicekit.route"] = "proxied"
            await PlainTextResponse("from the inner middleware")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def demo_app(**settings: Any) -> FastAPI:
    return new_service_app(
        DemoSettings(**settings),
        title="demo",
        version="1.2.3",
        description="A demo service.",
        health=HealthState(),
        inner_middleware=[Middleware(AnswersProxyPaths)],
    )


async def test_inner_middleware_is_logged_and_gets_a_request_id(
    asgi_client: ClientFactory, capture_logger: Capture
) -> None:
    access = capture_logger("access")
    async with asgi_client(demo_app()) as client:
        response = await client.get("/proxied/x", headers={"x-request-id": "abc"})
    assert response.text == "from the inner middleware"
    assert response.headers["x-request-id"] == "abc"
    [record] = access
    assert (record.route, record.status) == ("proxied", 200)


async def test_probes_and_problems_are_installed(asgi_client: ClientFactory) -> None:
    async with asgi_client(demo_app()) as client:
        livez = await client.get("/livez")
        missing = await client.get("/nowhere")
    assert livez.status_code == 200
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert missing.json()["request_id"] == missing.headers["x-request-id"]


async def test_access_log_can_be_turned_off(
    asgi_client: ClientFactory, capture_logger: Capture
) -> None:
    access = capture_logger("access")
    async with asgi_client(demo_app(access_log=False)) as client:
        response = await client.get("/livez")
    assert "x-request-id" in response.headers
    assert access == []


async def test_logs_go_to_the_configured_file(asgi_client: ClientFactory, tmp_path: Path) -> None:
    log_file = tmp_path / "api.log"
    async with asgi_client(demo_app(log_file=log_file)) as client:
        await client.get("/proxied/1")
    for handler in logging.getLogger().handlers:
        handler.flush()
    entries = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    [entry] = [e for e in entries if e["logger"] == "access"]
    assert (entry["msg"], entry["route"], entry["method"]) == ("request", "proxied", "GET")
    assert entry["request_id"]
