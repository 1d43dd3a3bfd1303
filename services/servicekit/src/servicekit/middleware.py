"""Pure ASGI middleware for request ids and access logs.

Pure ASGI rather than `BaseHTTPMiddleware`: it keeps `ContextVar`s visible to the app,
streams bodies untouched, and costs one wrapped `send` per request.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servicekit.context import request_id_var

REQUEST_ID_HEADER = b"x-request-id"
# Bounded length and a conservative charset: the id lands in logs and upstream headers.
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@=+/\-]{1,128}")
# Set by whatever handled the request, so the access log and metrics can name a route
# template ("/items/{item_id}") or a gateway route ("mock") instead of the raw path.
ROUTE_SCOPE_KEY = "servicekit.route"
UNMATCHED_ROUTE = "unmatched"

PROBE_PATHS = frozenset({"/livez", "/readyz", "/health", "/metrics"})
# Set by a handler that ends a request without any response, such as the gateway when
# the client went away (499): what the access log and metrics record instead of 500.
STATUS_SCOPE_KEY = "servicekit.status"


def incoming_request_id(scope: Scope) -> str | None:
    """The client's X-Request-ID if it is acceptable, else None."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _VALID_REQUEST_ID.fullmatch(value):
                return str(value.decode("ascii"))
            return None
    return None


def unanswered_status(scope: Scope) -> int:
    """The status to record for a request that got no response at all."""
    return int(scope.get(STATUS_SCOPE_KEY, 500))


def route_template(scope: Scope) -> str | None:
    """The path template of the FastAPI route that matched this request, if one did."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


def route_label(scope: Scope) -> str:
    """The route template that served this request; never the raw path."""
    label = scope.get(ROUTE_SCOPE_KEY)
    if label is not None:
        return str(label)
    template = route_template(scope)
    return UNMATCHED_ROUTE if template is None else template


class StatusRecorder:
    """A `send` that remembers the response status on its way through."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)

    def final_status(self, scope: Scope) -> int:
        """The status sent, or what to record for a request that got none (499 or 500)."""
        return self.status or unanswered_status(scope)


class RequestIdMiddleware:
    """Keeps a valid incoming X-Request-ID or makes one, and puts it on every response.

    The id is visible to the app through `servicekit.context.request_id_var`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        # Each request runs in its own task, with its own copy of the context, so the
        # value cannot leak into another request; error handlers that run after this
        # frame has unwound still see it.
        request_id_var.set(request_id)
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == REQUEST_ID_HEADER for name, _ in headers):
                    headers.append(header)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


class AccessLogMiddleware:
    """Writes one JSON line per request when it ends: method, route, status, duration.

    Probe and metrics requests are logged at debug level so that a kubelet polling every
    few seconds does not drown the requests that matter.
    """

    def __init__(self, app: ASGIApp, *, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or logging.getLogger("access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            self._log(scope, recorder.final_status(scope), time.perf_counter() - start)

    def _log(self, scope: Scope, status: int, seconds: float) -> None:
        level = logging.DEBUG if scope["path"] in PROBE_PATHS else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        client = scope.get("client")
        fields: dict[str, Any] = {
            "method": scope["method"],
            "route": route_label(scope),
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "client": client[0] if client else None,
        }
        self.logger.log(level, "request", extra=fields)
