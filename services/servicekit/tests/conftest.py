"""Helpers for servicekit's tests: an in-process HTTP client and captured log records."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import httpx
import pytest
from starlette.types import ASGIApp

from servicekit.logs import JsonFormatter
from servicekit.testing import LoggerCapture


@pytest.fixture
def capture_logger() -> Iterator[Callable[[str], list[logging.LogRecord]]]:
    """`capture_logger("access")`: a list that fills with that logger's records (DEBUG+)."""
    capture = LoggerCapture()
    yield capture
    capture.restore()


@pytest.fixture
def asgi_client() -> Callable[..., httpx.AsyncClient]:
    """`asgi_client(app)`: an httpx client that calls `app` in-process (no lifespan)."""

    def make(app: ASGIApp, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    return make


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`configure_logging` rewires the root logger; undo that after each test."""
    root = logging.getLogger()
    level = root.level
    watched = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "gunicorn.error")]
    propagate = [logger.propagate for logger in watched]
    access = logging.getLogger("uvicorn.access")
    access_disabled = access.disabled
    yield
    for handler in list(root.handlers):
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for logger, value in zip(watched, propagate, strict=True):
        logger.propagate = value
    access.disabled = access_disabled
