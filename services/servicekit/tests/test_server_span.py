"""servicekit's SERVER span: names, attributes, status, sampling and log correlation."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from pydantic_settings import SettingsConfigDict
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from servicekit.health import HealthState
from servicekit.logs import JsonFormatter
from servicekit.middleware import STATUS_SCOPE_KEY
from servicekit.server_span import HTTP_ROUTE_SCOPE_KEY, ServerSpanMiddleware, request_attributes
from servicekit.service import new_service_app
from servicekit.settings import ServiceSettings
from servicekit.tracing import UNTRACED_PATHS

ClientFactory = Callable[..., httpx.AsyncClient]


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")


class ProxyLike:
    """Answers /proxied/* outside FastAPI's routing, as the gateway's dispatcher does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith("/proxied/"):
            await self.app(scope, receive, send)
            return
        scope[HTTP_ROUTE_SCOPE_KEY] = "/proxied"
        if path == "/proxied/gone":  # the client went away: no response at all
            scope[STATUS_SCOPE_KEY] = 499
            return
        status = 503 if path == "/proxied/unavailable" else 200
        await PlainTextResponse("proxied", status_code=status)(scope, receive, send)


class FormattedLines(logging.Handler):
    """Formats each record as it is emitted, inside the request, like the real handlers."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    handler = FormattedLines()
    loggers = [logging.getLogger(name) for name in ("access", "demo.handler")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler.lines
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def traced_app(provider: TracerProvider | None) -> FastAPI:
    app = new_service_app(
        DemoSettings(),
        title="demo",
        version="1.0.0",
        description="A demo service.",
        health=HealthState(),
        inner_middleware=[Middleware(ProxyLike)],
        tracer_provider=provider,
    )
    handler_log = logging.getLogger("demo.handler")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        handler_log.info("serving item")
        carrier: dict[str, str] = {}
        inject(carrier)  # what an upstream call from here would send
        return {"item": item_id, "traceparent": carrier.get("traceparent")}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    return app


def new_traceparent(*, sampled: bool) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


async def test_templated_route(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with asgi_client(traced_app(provider)) as client:
        response = await client.get("/items/42", headers={"user-agent": "probe/1.0"})
    assert response.status_code == 200
    span = only_span(exporter)
    assert span.name == "GET /items/{item_id}"
    assert span.kind is SpanKind.SERVER
    assert span.parent is None
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/items/42",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
        "server.address": "testserver",
        "server.port": 80,
        "client.address": "127.0.0.1",
        "network.protocol.version": "1.1",
        "user_agent.original": "probe/1.0",
    }
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "servicekit.server_span"


async def test_unknown_path_is_named_by_method_only(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with asgi_client(traced_app(provider)) as client:
        response = await client.post("/nowhere/at/all")
    assert response.status_code == 404
    span = only_span(exporter)
    assert span.name == "POST"
    attributes = span.attributes or {}
    assert "http.route" not in attributes
    assert attributes["http.response.status_code"] == 404
    assert attributes["url.path"] == "/nowhere/at/all"
    assert span.status.status_code is StatusCode.UNSET  # a client error is not the server's


async def test_unhandled_exception_is_an_error_with_the_exception_recorded(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with asgi_client(traced_app(provider), raise_app_exceptions=False) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    span = only_span(exporter)
    assert span.name == "GET /boom"
    assert (span.attributes or {})["http.response.status_code"] == 500
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError: kaput"
    [event] = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "RuntimeError"
    assert (event.attributes or {})["exception.message"] == "kaput"


async def test_route_set_outside_fastapi_names_the_span(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with asgi_client(traced_app(provider)) as client:
        response = await client.get("/proxied/anything")
    assert response.status_code == 200
    span = only_span(exporter)
    assert span.name == "GET /proxied"
    assert (span.attributes or {})["http.route"] == "/proxied"
    assert span.status.status_code is StatusCode.UNSET


async def test_a_5xx_answer_is_an_error(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with asgi_client(traced_app(provider)) as client:
        response = await client.get("/proxied/unavailable")
    assert response.status_code == 503
    span = only_span(exporter)
    assert (span.attributes or {})["http.response.status_code"] == 503
    assert span.status.status_code is StatusCode.ERROR
    assert span.events == ()


async def test_no_response_at_all_is_not_an_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # httpx cannot make a request that gets no answer, so call the stack directly.
    app = traced_app(provider)
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/proxied/gone",
        "raw_path": b"/proxied/gone",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"gw.example:8080")],
        "client": ("10.0.0.1", 5555),
        "server": ("10.0.0.2", 8080),
        "state": {},
    }
    await app(scope, receive, send)
    assert messages == []
    span = only_span(exporter)
    assert span.name == "GET /proxied"
    assert "http.response.status_code" not in (span.attributes or {})
    assert span.status.status_code is StatusCode.UNSET


async def test_probes_and_scrapes_are_not_traced(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with asgi_client(traced_app(provider)) as client:
        for path in UNTRACED_PATHS:
            response = await client.get(path)
            assert response.status_code == 200, path
        assert exporter.get_finished_spans() == ()
        # Not vacuous: the same client's other requests are traced.
        await client.get("/livez/")  # exact paths only: this one is a 404
    assert [span.attributes["url.path"] for span in exporter.get_finished_spans()] == ["/livez/"]


async def test_a_sampled_incoming_trace_context_is_the_parent(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    traceparent, trace_id, parent_id = new_traceparent(sampled=True)
    async with asgi_client(traced_app(provider)) as client:
        response = await client.get("/items/1", headers={"traceparent": traceparent})
    span = only_span(exporter)
    assert span.parent is not None
    assert span.parent.is_remote
    assert format(span.parent.span_id, "016x") == parent_id
    assert format(span.context.trace_id, "032x") == trace_id
    # What the handler would send upstream: this trace, this span as the parent, sampled.
    span_id = format(span.context.span_id, "016x")
    assert response.json()["traceparent"] == f"00-{trace_id}-{span_id}-01"


async def test_an_unsampled_incoming_trace_context_records_nothing(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    traceparent, trace_id, _ = new_traceparent(sampled=False)
    async with asgi_client(traced_app(provider)) as client:
        response = await client.get("/items/1", headers={"traceparent": traceparent})
        assert response.status_code == 200
        assert exporter.get_finished_spans() == ()
        # The trace goes on, unsampled, to whatever this request calls.
        sent = response.json()["traceparent"]
        assert sent.startswith(f"00-{trace_id}-")
        assert sent.endswith("-00")
        # Not vacuous: without the header, the same request is recorded.
        await client.get("/items/1")
    assert len(exporter.get_finished_spans()) == 1


async def test_log_lines_carry_the_server_span_ids(
    asgi_client: ClientFactory,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    lines: list[dict[str, Any]],
) -> None:
    async with asgi_client(traced_app(provider)) as client:
        await client.get("/items/7")
    span = only_span(exporter)
    trace_id = format(span.context.trace_id, "032x")
    span_id = format(span.context.span_id, "016x")
    assert [line["logger"] for line in lines] == ["demo.handler", "access"]
    for line in lines:
        assert (line["trace_id"], line["span_id"]) == (trace_id, span_id), line
    assert lines[1]["route"] == "/items/{item_id}"


async def test_unknown_methods_do_not_make_span_names(
    asgi_client: ClientFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with asgi_client(traced_app(provider)) as client:
        await client.request("BREW", "/items/1")
    span = only_span(exporter)
    assert span.name == "HTTP /items/{item_id}"  # 405, but the route matched
    attributes = span.attributes or {}
    assert attributes["http.request.method"] == "_OTHER"
    assert attributes["http.request.method_original"] == "BREW"


@pytest.mark.parametrize(
    ("host", "scheme", "address", "port"),
    [
        (b"api.example", "https", "api.example", 443),
        (b"api.example:8443", "https", "api.example", 8443),
        (b"[::1]:8080", "http", "::1", 8080),
        (b"[::1]", "http", "::1", 80),
        (None, "http", "10.0.0.2", 9000),  # no Host header: the socket's address
    ],
)
def test_server_address_and_port(host: bytes | None, scheme: str, address: str, port: int) -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": scheme,
        "path": "/",
        "headers": [(b"host", host)] if host is not None else [],
        "server": ("10.0.0.2", 9000),
        "client": None,
    }
    attributes = request_attributes(scope, "GET")
    assert (attributes["server.address"], attributes["server.port"]) == (address, port)
    assert "client.address" not in attributes
    assert "user_agent.original" not in attributes


def test_no_tracer_provider_means_no_server_span_middleware() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # no SDK one
    untraced = traced_app(None).build_middleware_stack()
    assert not isinstance(untraced, ServerSpanMiddleware)
    traced = traced_app(TracerProvider()).build_middleware_stack()
    assert isinstance(traced, ServerSpanMiddleware)
