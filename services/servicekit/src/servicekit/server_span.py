"""One SERVER span per HTTP request, made by a small pure ASGI middleware.

It replaces OpenTelemetry's generic ASGI instrumentation, which cost the gateway about
a fifth of a traced worker's CPU: it collected many attributes, wrapped every `send`
in a span-aware function, and matched each request against every FastAPI route just to
name the span. Here the span carries the stable HTTP semantic-convention attributes and
nothing more, `send` is wrapped only to learn the status (and only when the span is
recorded), and the route comes from what routing already found:

- a FastAPI endpoint's template, from `scope["route"]` once the router has matched;
- or `HTTP_ROUTE_SCOPE_KEY`, which a handler outside FastAPI's routing (the gateway's
  proxy) sets to the template it served.

The span is named `"{method} {route}"` when the request ends with a route known, else
`"{method}"`. It is current for the whole request, so log lines (see `logs`), client
spans and the trace context sent upstream all hang off it. An incoming W3C trace
context is its parent, so parent-based sampling holds: an unsampled caller's request
records nothing, and what it calls stays unsampled too.

Status: ERROR for 5xx responses and for exceptions (recorded as an event); left unset
otherwise, also for a request that ended without any response (a client that went away).
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue
from starlette.types import ASGIApp, Receive, Scope, Send

from servicekit.middleware import StatusRecorder, route_template
from servicekit.tracing import UNTRACED_PATHS

# Set by a handler that serves a request outside FastAPI's routing, to the route
# template the semantic conventions call `http.route` (the gateway: "/mock").
HTTP_ROUTE_SCOPE_KEY = "servicekit.http_route"

_UNTRACED = frozenset(UNTRACED_PATHS)
# The methods the semantic conventions know; any other is "_OTHER", so that a client
# inventing methods cannot invent span names.
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Headers = list[tuple[bytes, bytes]]


class AsgiHeaderGetter(Getter[Headers]):
    """Reads propagation fields straight from an ASGI header list (names are lowercase)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier if header == name]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]


_GETTER = AsgiHeaderGetter()


def http_route(scope: Scope) -> str | None:
    """The route template that served this request, if any."""
    route = scope.get(HTTP_ROUTE_SCOPE_KEY)
    if route is not None:
        return str(route)
    return route_template(scope)


def request_attributes(scope: Scope, method: str) -> dict[str, AttributeValue]:
    """The span's attributes known when the request starts."""
    scheme: str = scope["scheme"]
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "url.scheme": scheme,
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = scope["method"]
    host: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
        elif name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    if host:
        address, port = _split_host(host.decode("latin-1"), scheme)
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    else:
        server = scope.get("server")
        if server:
            attributes["server.address"] = server[0]
            if server[1] is not None:
                attributes["server.port"] = server[1]
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    return attributes


def _split_host(host: str, scheme: str) -> tuple[str, int | None]:
    """`example.com:8080` -> ("example.com", 8080); `[::1]` -> ("::1", 80 for http)."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and not name.endswith(":"):  # not the inside of "[::1]"
        return name.strip("[]"), int(port)
    return host.strip("[]"), _DEFAULT_PORTS.get(scheme)


class ServerSpanMiddleware:
    """Runs every traced HTTP request inside a SERVER span; see the module docstring.

    Installed outermost, outside Starlette's `ServerErrorMiddleware`, so the 500 that
    middleware sends for an unhandled exception is seen, and every log line written
    while serving (the access log's included) carries this span's ids.
    """

    def __init__(self, app: ASGIApp, *, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACED:
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        if method not in _KNOWN_METHODS:
            method = "_OTHER"
        parent = get_global_textmap().extract(scope["headers"], getter=_GETTER)
        span = self.tracer.start_span(
            "HTTP" if method == "_OTHER" else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=request_attributes(scope, method),
            record_exception=False,
            set_status_on_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            if not span.is_recording():  # unsampled: only the context matters
                await self.app(scope, receive, send)
                return
            recorder = StatusRecorder(send)
            failed = False
            try:
                await self.app(scope, receive, recorder)
            except Exception as exc:
                failed = True
                span.record_exception(exc, escaped=True)
                span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                raise
            finally:
                _finish(span, scope, method, recorder.status, failed=failed)
        finally:
            span.end()
            otel_context.detach(token)


def _finish(
    span: trace.Span, scope: Scope, method: str, status: int | None, *, failed: bool
) -> None:
    """What is known only when the request ends: route, name, status."""
    attributes: dict[str, AttributeValue] = {}
    route = http_route(scope)
    if route is not None:
        span.update_name(f"{'HTTP' if method == '_OTHER' else method} {route}")
        attributes["http.route"] = route
    if status is not None:  # None: no response at all, such as for a client gone (499)
        attributes["http.response.status_code"] = status
        if status >= 500 and not failed:  # an exception has set a more telling status
            span.set_status(StatusCode.ERROR)
    if attributes:
        span.set_attributes(attributes)
