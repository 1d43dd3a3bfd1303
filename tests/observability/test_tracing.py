"""One trace from the client through the gateway to the mock, joined to both services' logs.

The spans arrive over real OTLP/HTTP from real gunicorn workers, so this also proves that
each worker built its own tracer provider after fork: a provider built in the master
would export nothing at all.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.harness.pinning import Pinned, pin_workers
from tests.harness.processes import MOCK_APP, start_service, wait_for

from .support import (
    GATEWAY_SERVICE_NAME,
    MOCK_SERVICE_NAME,
    PROBE_PATHS,
    ReceivedSpan,
    Stack,
)

SPAN_TIMEOUT = 15.0


def new_traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def parse_traceparent(value: str) -> tuple[str, str, int]:
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00", value
    assert len(trace_id) == 32, value
    assert len(parent_id) == 16, value
    return trace_id, parent_id, int(flags, 16)


def upstream_traceparent(response: httpx.Response) -> str:
    """The traceparent the mock received, as its /echo reports it."""
    assert response.status_code == 200, response.text
    headers: dict[str, str] = response.json()["headers"]
    assert "traceparent" in headers, f"no traceparent reached the mock: {headers}"
    return headers["traceparent"]


def one(spans: list[ReceivedSpan], service: str, kind: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.kind == kind]
    assert len(found) == 1, f"expected one {kind} span from {service}, got {describe(spans)}"
    return found[0]


def describe(spans: list[ReceivedSpan]) -> str:
    return "; ".join(
        f"{s.service} {s.kind} {s.name!r} {s.span_id}<-{s.parent_span_id or 'root'}" for s in spans
    )


def has(spans: list[ReceivedSpan], service: str, kind: str) -> bool:
    return any(s.service == service and s.kind == kind for s in spans)


def wait_trace(stack: Stack, trace_id: str, *wanted: tuple[str, str]) -> list[ReceivedSpan]:
    def check() -> list[ReceivedSpan] | None:
        spans = stack.receiver.trace(trace_id)
        return spans if all(has(spans, svc, kind) for svc, kind in wanted) else None

    return wait_for(f"spans {wanted} of trace {trace_id}", check, timeout=SPAN_TIMEOUT)


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    by_id = {s.span_id: s for s in spans}
    chain: list[str] = []
    current = span
    while current.parent_span_id and current.parent_span_id in by_id:
        chain.append(current.parent_span_id)
        current = by_id[current.parent_span_id]
        assert len(chain) < 50, "parent cycle"
    return chain


def path_of(span: ReceivedSpan) -> Any:
    """The request path, under the old or the new HTTP semantic conventions."""
    return span.attributes.get("url.path") or span.attributes.get("http.target")


@pytest.fixture
def pinned(stack: Stack) -> Iterator[dict[str, Pinned]]:
    """One keep-alive connection to every worker of both services."""
    pins: dict[str, Pinned] = {}
    try:
        pins[GATEWAY_SERVICE_NAME] = pin_workers(stack.gateway)
        pins[MOCK_SERVICE_NAME] = pin_workers(stack.mock)
        yield pins
    finally:
        for pin in pins.values():
            pin.close()


def flush_exports(stack: Stack, pins: dict[str, Pinned]) -> None:
    """Return once every worker of both services has exported all spans ended so far.

    Each worker's batch processor exports in the order spans end, so a marker request
    sent to every worker after the requests under test, once its server span has
    arrived, proves that anything those workers would have exported has arrived too.
    """
    markers: list[tuple[str, str]] = []
    for service, pin in pins.items():
        path = "/mock/echo" if service == GATEWAY_SERVICE_NAME else "/echo"
        for conn in pin:
            traceparent, trace_id, _ = new_traceparent()
            status, _, _ = conn.request("GET", f"{path}?marker", {"traceparent": traceparent})
            assert status == 200
            markers.append((service, trace_id))
    for service, trace_id in markers:
        wait_trace(stack, trace_id, (service, "SERVER"))


@pytest.mark.parametrize("client_request_id", [True, False], ids=["client-id", "gateway-id"])
def test_one_trace_through_gateway_and_mock(stack: Stack, client_request_id: bool) -> None:
    sent_id = f"obs-{secrets.token_hex(8)}"
    headers = {"X-Request-ID": sent_id} if client_request_id else {}
    response = httpx.get(stack.gateway.url + "/mock/echo", headers=headers, timeout=10)
    request_id = response.headers["x-request-id"]
    if client_request_id:
        assert request_id == sent_id
    assert response.json()["headers"]["x-request-id"] == request_id  # what the mock got
    trace_id, client_span_id, flags = parse_traceparent(upstream_traceparent(response))
    assert flags & 1, "the gateway sent an unsampled trace context"

    spans = wait_trace(
        stack,
        trace_id,
        (GATEWAY_SERVICE_NAME, "SERVER"),
        (GATEWAY_SERVICE_NAME, "CLIENT"),
        (MOCK_SERVICE_NAME, "SERVER"),
    )
    gw_server = one(spans, GATEWAY_SERVICE_NAME, "SERVER")
    gw_client = one(spans, GATEWAY_SERVICE_NAME, "CLIENT")  # one upstream attempt
    mock_server = one(spans, MOCK_SERVICE_NAME, "SERVER")
    assert len(spans) == 3, describe(spans)
    assert {s.trace_id for s in spans} == {trace_id}
    assert {s.service for s in spans} == {GATEWAY_SERVICE_NAME, MOCK_SERVICE_NAME}

    # client -> gateway SERVER -> gateway CLIENT -> mock SERVER
    assert gw_server.parent_span_id == "", "the gateway's server span should be the root"
    assert gw_client.parent_span_id == gw_server.span_id
    assert gw_client.span_id == client_span_id, "the mock got another span as its parent"
    assert mock_server.parent_span_id == gw_client.span_id
    assert gw_client.span_id in ancestors(mock_server, spans)
    assert gw_server.span_id in ancestors(mock_server, spans)

    # What an operator filters on in the tracing backend.
    assert gw_server.name == "GET /mock"
    assert gw_server.attributes["gateway.route"] == "mock"
    assert gw_server.attributes["http.route"] == "/mock"
    assert gw_client.name == "GET"
    assert gw_client.attributes["gateway.route"] == "mock"
    assert gw_client.attributes["gateway.upstream"] == stack.mock.url
    assert gw_client.attributes["url.full"] == stack.mock.url + "/echo"
    assert gw_client.attributes["http.request.method"] == "GET"
    assert gw_client.attributes["http.response.status_code"] == 200
    assert gw_client.attributes["server.address"] == "127.0.0.1"
    assert gw_client.attributes["server.port"] == stack.mock.port
    assert mock_server.name == "GET /echo"
    assert mock_server.attributes["http.route"] == "/echo"
    assert gw_server.resource["service.name"] == GATEWAY_SERVICE_NAME
    assert mock_server.resource["service.name"] == "downstream-mock"
    assert stack.receiver.rejected == [], "exports that were not protobuf POSTs to /v1/traces"

    # The request id joins both services' log lines to this trace.
    def access_lines() -> dict[str, list[dict[str, Any]]] | None:
        found = {
            name: [line for line in service.log_lines() if line.get("request_id") == request_id]
            for name, service in (("gateway", stack.gateway), ("mock", stack.mock))
        }
        ready = all(
            any(line.get("logger") == "access" for line in lines) for lines in found.values()
        )
        return found if ready else None

    lines = wait_for(f"access log lines with request_id {request_id}", access_lines, timeout=10)
    for name, service_lines in lines.items():
        for line in service_lines:
            assert line.get("trace_id") == trace_id, f"{name}: {json.dumps(line)}"
            assert line.get("span_id"), f"{name}: {json.dumps(line)}"
    (gw_access,) = [line for line in lines["gateway"] if line["logger"] == "access"]
    (mock_access,) = [line for line in lines["mock"] if line["logger"] == "access"]
    assert gw_access["span_id"] == gw_server.span_id
    assert gw_access["route"] == "mock"
    assert gw_access["status"] == 200
    assert mock_access["span_id"] == mock_server.span_id
    assert mock_access["route"] == "/echo"


def test_incoming_traceparent_is_the_parent(stack: Stack) -> None:
    traceparent, trace_id, parent_id = new_traceparent(sampled=True)
    response = httpx.get(
        stack.gateway.url + "/mock/echo", headers={"traceparent": traceparent}, timeout=10
    )
    upstream_trace_id, upstream_parent, flags = parse_traceparent(upstream_traceparent(response))
    assert upstream_trace_id == trace_id, "the gateway started a new trace"
    assert upstream_parent != parent_id, "the client's traceparent was passed on unchanged"
    assert flags & 1

    spans = wait_trace(
        stack,
        trace_id,
        (GATEWAY_SERVICE_NAME, "SERVER"),
        (GATEWAY_SERVICE_NAME, "CLIENT"),
        (MOCK_SERVICE_NAME, "SERVER"),
    )
    gw_server = one(spans, GATEWAY_SERVICE_NAME, "SERVER")
    gw_client = one(spans, GATEWAY_SERVICE_NAME, "CLIENT")
    mock_server = one(spans, MOCK_SERVICE_NAME, "SERVER")
    assert gw_server.parent_span_id == parent_id
    assert gw_client.span_id == upstream_parent
    assert mock_server.parent_span_id == gw_client.span_id


def test_unsampled_parent_is_respected(stack: Stack, pinned: dict[str, Pinned]) -> None:
    """Parent-based sampling: a client that did not sample gets no spans recorded anywhere."""
    traceparent, trace_id, _ = new_traceparent(sampled=False)
    gateway_conn = next(iter(pinned[GATEWAY_SERVICE_NAME]))
    status, _, body = gateway_conn.request("GET", "/mock/echo", {"traceparent": traceparent})
    assert status == 200
    upstream = json.loads(body)["headers"]["traceparent"]
    upstream_trace_id, _, flags = parse_traceparent(upstream)
    assert upstream_trace_id == trace_id
    assert flags & 1 == 0, f"the gateway turned an unsampled trace into a sampled one: {upstream}"
    flush_exports(stack, pinned)
    assert stack.receiver.trace(trace_id) == []


def test_probes_and_scrapes_are_not_traced(stack: Stack, pinned: dict[str, Pinned]) -> None:
    for pin in pinned.values():
        for conn in pin:
            for path in PROBE_PATHS:
                status, _, _ = conn.request("GET", path)
                assert status == 200, path
    flush_exports(stack, pinned)

    spans = stack.receiver.spans()
    # Not vacuous: the attribute the check reads is there on every server span.
    servers = [s for s in spans if s.kind == "SERVER"]
    assert servers
    assert all(path_of(s) for s in servers), describe(servers[:5])
    traced_probes = [
        s
        for s in spans
        if str(path_of(s)).split("?")[0] in PROBE_PATHS
        or s.attributes.get("http.route") in PROBE_PATHS
        or s.name.split(" ")[-1] in PROBE_PATHS
    ]
    assert traced_probes == [], describe(traced_probes)


def test_spans_are_flushed_when_a_worker_stops(stack: Stack) -> None:
    """A span still queued when gunicorn stops its workers is exported, not lost.

    This mock exports only every 10 minutes, so the span can only arrive through the
    flush in gunicorn's `worker_exit` hook on SIGTERM.
    """
    mock = start_service(
        "mock-flush",
        MOCK_APP,
        workdir=stack.workdir,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        },
    )
    try:
        traceparent, trace_id, _ = new_traceparent()
        response = httpx.get(mock.url + "/echo", headers={"traceparent": traceparent}, timeout=10)
        assert response.status_code == 200
        time.sleep(1.0)
        assert stack.receiver.trace(trace_id) == [], "exported before shutdown: test is moot"
    finally:
        mock.stop()
    assert mock.process.returncode == 0, mock.tail()
    (span,) = stack.receiver.trace(trace_id)
    assert span.service == MOCK_SERVICE_NAME
    assert span.kind == "SERVER"
