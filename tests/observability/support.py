"""What the observability suite adds to tests/harness: a real OTLP receiver, the stack,
and a Prometheus server of its own.

Everything here talks to 127.0.0.1 only, every wait has a deadline, and every process is
stopped by the PID it was started with.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from tests.harness.loopback_server import LoopbackServer, QuietHandler
from tests.harness.processes import (
    ROOT,
    START_TIMEOUT,
    Service,
    free_port,
    stop_process,
    tail_file,
    wait_for,
)

# Service names in the tracing backend. The gateway gets its name from the standard
# OTEL_SERVICE_NAME, set to something other than its built-in default so the test shows
# the variable wins; the mock runs without it, so the test shows the built-in default.
GATEWAY_SERVICE_NAME = "gateway-observability-test"
MOCK_SERVICE_NAME = "downstream-mock"
PROBE_PATHS = ("/livez", "/readyz", "/health", "/metrics")
PROTOBUF = "application/x-protobuf"


# --------------------------------------------------------------------------- OTLP receiver


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def decode_spans(payload: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=service,
                        name=span.name,
                        kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        resource=resource,
                    )
                )
    return spans


class OtlpReceiver(LoopbackServer):
    """An OTLP/HTTP trace receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.rejected: list[str] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = self.rfile.read(length)
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    payload = gzip.decompress(payload)
                content_type = self.headers.get("Content-Type", "")
                if self.path != "/v1/traces" or content_type != PROTOBUF:
                    receiver.rejected.append(f"{self.path} {content_type}")
                    self.answer(404, b"", PROTOBUF)
                    return
                try:
                    spans = decode_spans(payload)
                except DecodeError as exc:  # recorded: the tests check `rejected`
                    receiver.rejected.append(f"undecodable export: {exc!r}")
                    self.answer(400, b"", PROTOBUF)
                    return
                receiver.add(spans)
                self.answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)

        super().__init__(Handler)
        self.endpoint = self.origin

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans() if s.trace_id == trace_id]


# --------------------------------------------------------------------------- the stack


# The gateway runs the demo route table plus the suite's own routes (see routes.yaml).
DEMO_ROUTES_FILE = ROOT / "services/gateway/routes.yaml"
OWN_ROUTES_FILE = Path(__file__).with_name("routes.yaml")


def write_route_table(path: Path) -> Path:
    """The demo routes, unchanged, followed by the suite's own, as one route file."""
    demo = yaml.safe_load(DEMO_ROUTES_FILE.read_text(encoding="utf-8"))
    own = yaml.safe_load(OWN_ROUTES_FILE.read_text(encoding="utf-8"))
    table = {**demo, "routes": [*demo["routes"], *own["routes"]]}
    path.write_text(yaml.safe_dump(table, sort_keys=False), encoding="utf-8")
    return path


class RefusedPort:
    """A loopback port that refuses every connection while this is open.

    The socket is bound but never listens, so a connect gets a reset at once (the
    fastest connect error there is) and no other process can take the port meanwhile.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])

    def close(self) -> None:
        self._sock.close()


@dataclass
class Stack:
    receiver: OtlpReceiver
    gateway: Service
    mock: Service
    workdir: Path
    routes_file: Path  # what the gateway runs: write_route_table's output
    dead_upstream: str  # the origin of the `tripping` route: nothing ever answers there


# --------------------------------------------------------------------------- Prometheus

# Where Debian's package puts it; PROMETHEUS_BINARY overrides.
PROMETHEUS_DEFAULT = "/usr/bin/prometheus"


def prometheus_binary() -> str | None:
    wanted = os.environ.get("PROMETHEUS_BINARY")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    found = shutil.which("prometheus")
    if found:
        return found
    return PROMETHEUS_DEFAULT if os.access(PROMETHEUS_DEFAULT, os.X_OK) else None


@dataclass
class Prometheus:
    """A Prometheus server of our own on loopback, scraping the services every second."""

    process: subprocess.Popen[bytes]
    port: int
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        data = response.json()
        assert isinstance(data, dict)
        return data

    def query(self, expr: str) -> dict[str, Any]:
        """The /api/v1/query answer for `expr` evaluated now, as JSON."""
        return dict(self.api("query", query=expr))

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["data"]["activeTargets"])

    def tail(self, lines: int = 30) -> str:
        return tail_file(self.log_file, lines)

    def stop(self) -> None:
        stop_process(self.process)


def start_prometheus(binary: str, workdir: Path, jobs: Mapping[str, Service]) -> Prometheus:
    """Scrape each service under its job name, as compose does: no Kubernetes labels."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{service.port}"]}],
            }
            for job, service in jobs.items()
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    log_file = workdir / "prometheus.log"
    for attempt in range(3):
        port = free_port()
        with log_file.open("ab") as out:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        prometheus = Prometheus(process, port, log_file)
        try:
            wait_for(
                "prometheus to be ready",
                functools.partial(_prometheus_ready, prometheus),
                timeout=START_TIMEOUT,
                interval=0.2,
            )
        except AssertionError:
            prometheus.stop()
            if attempt < 2 and "address already in use" in prometheus.tail().lower():
                continue
            raise
        return prometheus
    raise AssertionError("unreachable")  # pragma: no cover


def _prometheus_ready(prometheus: Prometheus) -> bool:
    if prometheus.process.poll() is not None:
        raise AssertionError(f"prometheus exited: {prometheus.tail()}")
    try:
        return httpx.get(prometheus.url + "/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
