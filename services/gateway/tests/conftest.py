"""Helpers for the gateway's tests.

`gateway(handler)` runs the whole app in-process, lifespan included, with upstream calls
going to `handler` through `httpx.MockTransport`; nothing listens on a socket.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message, Scope

from gateway.app import create_app
from gateway.settings import Settings
from servicekit.logs import JsonFormatter
from servicekit.testing import LoggerCapture

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]
AppFactory = Callable[..., AbstractAsyncContextManager[ASGIApp]]
ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]

# The route table most proxy tests run against. Upstream hosts are names only the
# MockTransport handler ever sees.
ROUTES = """
routes:
  - name: api
    prefix: /api
    upstream: http://api.upstream
    timeout: {connect: 1, read: 2, total: 3}
    max_body_bytes: 100
  - name: api-v2
    prefix: /api/v2
    upstream: http://v2.upstream
  - name: scoped
    prefix: /scoped
    upstream: http://scoped.upstream:8081/base/path
  - name: keep
    prefix: /keep
    upstream: http://keep.upstream
    strip_prefix: false
  - name: quick
    prefix: /quick
    upstream: http://quick.upstream
    timeout: {connect: 0.1, read: 0.1, total: 0.2}
"""


@pytest.fixture
def write_routes(tmp_path: Path) -> Callable[[str], Path]:
    """`write_routes(yaml_text)`: the path of a route file holding `yaml_text`."""

    def write(text: str) -> Path:
        path = tmp_path / "routes.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def routes_file(write_routes: Callable[[str], Path]) -> Path:
    """A route file holding `ROUTES`."""
    return write_routes(ROUTES)


@pytest.fixture
def gateway_app(write_routes: Callable[[str], Path]) -> AppFactory:
    """`async with gateway_app(handler, routes=ROUTES) as app:` the app, lifespan running."""

    @asynccontextmanager
    async def run(
        handler: Handler, *, routes: str = ROUTES, **settings: Any
    ) -> AsyncIterator[ASGIApp]:
        app = create_app(
            Settings(routes_file=write_routes(routes), **settings),
            transport=httpx.MockTransport(handler),
        )
        async with LifespanManager(app) as manager:
            yield manager.app

    return run


@pytest.fixture
def gateway(gateway_app: AppFactory) -> ClientFactory:
    """`async with gateway(handler, routes=ROUTES) as client:` a client for a running app."""

    @asynccontextmanager
    async def run(handler: Handler, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
        async with (
            gateway_app(handler, **options) as app,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw.example"
            ) as client,
        ):
            yield client

    return run


class Exchange:
    """What an ASGI app sent back for one request made with `raw_request`."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages

    @property
    def status(self) -> int:
        start = self.messages[0]
        assert start["type"] == "http.response.start"
        return int(start["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def complete(self) -> bool:
        return self.messages[-1].get("more_body", False) is False and len(self.messages) > 1


@pytest.fixture
def raw_request() -> Callable[..., Awaitable[Exchange]]:
    """Send one request straight to an ASGI app, with a raw path no HTTP client would send.

    `disconnect=True` makes the client go away as soon as it has sent its body;
    `disconnect="mid-body"` makes it go away after `chunks`, before the body ends.
    """

    async def call(
        app: ASGIApp,
        raw_path: bytes,
        *,
        method: str = "GET",
        query: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        chunks: list[bytes] | None = None,
        disconnect: bool | str = False,
    ) -> Exchange:
        incoming: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks or []
        ]
        if disconnect != "mid-body":
            incoming.append({"type": "http.request", "body": b"", "more_body": False})
        sent: list[Message] = []
        finished = asyncio.Event()

        async def receive() -> Message:
            if incoming:
                return incoming.pop(0)
            if not disconnect:
                await finished.wait()  # a client that stays until the response ends
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished.set()

        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"gw.example"), *(headers or [])],
            "client": ("127.0.0.1", 40000),
            "server": ("gw.example", 80),
        }
        await app(scope, receive, send)
        return Exchange(sent)

    return call


@pytest.fixture
def capture_logger() -> Iterator[Callable[[str], list[logging.LogRecord]]]:
    """`capture_logger("access")`: a list that fills with that logger's records (DEBUG+)."""
    capture = LoggerCapture()
    yield capture
    capture.restore()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`create_app` configures JSON logging on the root logger; undo that after each test."""
    root = logging.getLogger()
    level = root.level
    access = logging.getLogger("uvicorn.access")
    access_disabled = access.disabled
    yield
    for handler in list(root.handlers):
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    access.disabled = access_disabled
