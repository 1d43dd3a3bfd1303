"""What the observability suite runs against: real processes and a real OTLP receiver.

Everything here talks to 127.0.0.1 only, every wait has a deadline, and every process is
stopped by the PID it was started with.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
WORKERS = 2
# Service names in the tracing backend. The gateway gets its name from the standard
# OTEL_SERVICE_NAME, set to something other than its built-in default so the test shows
# the variable wins; the mock runs without it, so the test shows the built-in default.
GATEWAY_SERVICE_NAME = "gateway-observability-test"
MOCK_SERVICE_NAME = "downstream-mock"
PROBE_PATHS = ("/livez", "/readyz", "/health", "/metrics")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Poll `check` until it returns something other than None/False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class OtlpReceiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.rejected: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the exporter keeps its connection alive

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = self.rfile.read(length)
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    payload = gzip.decompress(payload)
                content_type = self.headers.get("Content-Type", "")
                if self.path != "/v1/traces" or content_type != "application/x-protobuf":
                    receiver.rejected.append(f"{self.path} {content_type}")
                    self._answer(404, b"")
                    return
                try:
                    spans = decode_spans(payload)
                except DecodeError as exc:  # recorded: the tests check `rejected`
                    receiver.rejected.append(f"undecodable export: {exc!r}")
                    self._answer(400, b"")
                    return
                receiver.add(spans)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest output is for failures

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans() if s.trace_id == trace_id]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    """One gunicorn master (and its workers) that this suite started."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path  # the JSON lines the app writes (`*_LOG_FILE`)
    stdout_file: Path  # everything the master and workers print
    multiproc_dir: Path
    # Every worker seen, kept as psutil handles: `is_running` tells a reused PID apart.
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def master_pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> set[int]:
        try:
            children = psutil.Process(self.master_pid).children()
        except psutil.NoSuchProcess:
            return set()
        live = {}
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    live[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        for pid, child in live.items():
            self.seen.setdefault(pid, child)
        return set(live)

    def wait_workers(self, count: int = WORKERS, *, exclude: int | None = None) -> set[int]:
        def check() -> set[int] | None:
            pids = self.worker_pids()
            return pids if len(pids) == count and exclude not in pids else None

        return wait_for(f"{self.name} to have {count} workers", check, timeout=START_TIMEOUT)

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines in the app's log file (and its rotated backups, oldest first)."""
        lines: list[dict[str, Any]] = []
        backups = sorted(self.log_file.parent.glob(self.log_file.name + ".*"), reverse=True)
        for path in [*backups, self.log_file]:
            if not path.exists():
                continue
            for raw in path.read_text(encoding="utf-8").splitlines():
                if raw.strip():
                    lines.append(json.loads(raw))
        return lines

    def tail(self, lines: int = 40) -> str:
        if not self.stdout_file.exists():
            return ""
        text = self.stdout_file.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM the master, wait (bounded), then SIGKILL whatever is left, by PID."""
        self.worker_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for worker in self.seen.values():
            if worker.is_running():  # a worker the master left behind
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.kill()


def service_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without anything that would change what the services do."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "GATEWAY_", "MOCK_", "PROMETHEUS_MULTIPROC_DIR"))
        and k not in {"UNREACHABLE_UPSTREAM", "SERVICEKIT_OWNED_TEMP_DIRS"}
    }
    env.update(extra)
    return env


def start_service(
    name: str,
    *,
    prefix: str,
    config: Path,
    app: str,
    workdir: Path,
    env: Mapping[str, str],
) -> Service:
    """Start one service under gunicorn (as scripts/lib/services.sh does) and wait for /readyz.

    A port taken between choosing and binding it is retried with another one.
    """
    for attempt in range(3):
        port = free_port()
        log_file = workdir / f"{name}.log"
        stdout_file = workdir / f"{name}.stdout"
        multiproc_dir = workdir / f"{name}-metrics"
        service_env = service_environment(
            {
                **env,
                f"{prefix}_PORT": str(port),
                f"{prefix}_WORKERS": str(WORKERS),
                f"{prefix}_LOG_FILE": str(log_file),
                # Stop quickly at the end of the session: nothing balances load here.
                f"{prefix}_GRACEFUL_TIMEOUT": "5",
                f"{prefix}_DRAIN_DELAY": "0",
                "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
            }
        )
        with stdout_file.open("ab") as out:
            process = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", str(config), app],
                cwd=ROOT,
                env=service_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        service = Service(name, port, process, log_file, stdout_file, multiproc_dir)
        try:
            _wait_ready(service)
        except AssertionError:
            service.stop()
            if attempt < 2 and "Address already in use" in service.tail(200):
                continue
            raise
        service.wait_workers()
        return service
    raise AssertionError("unreachable")  # pragma: no cover


def _wait_ready(service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no attempt"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise AssertionError(
                    f"{service.name} exited with {service.process.returncode} before it was"
                    f" ready; last output:\n{service.tail()}"
                )
            try:
                response = client.get(service.url + "/readyz")
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            time.sleep(0.1)
    raise AssertionError(
        f"{service.name} not ready within {START_TIMEOUT:.0f} s (last: {last}); "
        f"last output:\n{service.tail()}"
    )


@dataclass
class Stack:
    receiver: OtlpReceiver
    gateway: Service
    mock: Service
    workdir: Path


# --------------------------------------------------------------------------- connections


class PinnedConnection:
    """A keep-alive connection known to be served by one particular worker.

    A gunicorn worker keeps every connection it accepted, so requests on this one always
    reach `worker_pid`; that is how a test talks to each worker on purpose.
    """

    def __init__(self, conn: http.client.HTTPConnection, worker_pid: int) -> None:
        self.conn = conn
        self.worker_pid = worker_pid

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, headers=dict(headers or {}))
        response = self.conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def get_json(self, path: str, headers: Mapping[str, str] | None = None) -> Any:
        status, _, body = self.request("GET", path, headers)
        assert status == 200, f"GET {path} -> {status}: {body[:300]!r}"
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


def _serving_worker(service: Service, local_port: int, workers: set[int]) -> int | None:
    for pid in workers:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for c in connections:
            if c.laddr and c.raddr and c.laddr.port == service.port and c.raddr.port == local_port:
                return pid
    return None


@dataclass
class Pinned:
    by_worker: dict[int, PinnedConnection]

    def __iter__(self) -> Iterator[PinnedConnection]:
        return iter(self.by_worker.values())

    def close(self) -> None:
        for conn in self.by_worker.values():
            conn.close()


def pin_workers(service: Service, *, attempts: int = 64) -> Pinned:
    """One keep-alive connection per live worker of `service`.

    Connections are opened until every worker has accepted one (which worker accepts is
    the kernel's choice); the spare ones are closed.
    """
    workers = service.wait_workers()
    found: dict[int, PinnedConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    try:
        for _ in range(attempts):
            conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
            conn.request("GET", "/livez")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            assert conn.sock is not None
            local_port = conn.sock.getsockname()[1]
            pid = wait_for(
                f"the {service.name} worker serving local port {local_port}",
                functools.partial(_serving_worker, service, local_port, workers),
                timeout=5,
            )
            if pid in found:
                spare.append(conn)
            else:
                found[pid] = PinnedConnection(conn, pid)
            if set(found) == workers:
                return Pinned(found)
    finally:
        for conn in spare:
            conn.close()
    for pinned in found.values():
        pinned.close()
    raise AssertionError(
        f"{attempts} connections to {service.name} all went to workers {sorted(found)};"
        f" live workers are {sorted(workers)}"
    )


# --------------------------------------------------------------------------- metrics

SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Scrape:
    text: str
    samples: dict[SampleKey, float]
    families: dict[str, str]  # family name -> type
    sample_names: dict[str, str]  # sample name -> family name

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when it is not exported (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for (n, ls) in self.samples if n == name and label in dict(ls)}


def parse_scrape(text: str) -> Scrape:
    samples: dict[SampleKey, float] = {}
    families: dict[str, str] = {}
    sample_names: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key} in one scrape"
            samples[key] = sample.value
            sample_names[sample.name] = family.name
    return Scrape(text, samples, families, sample_names)


def scrape(service: Service, via: PinnedConnection | None = None) -> Scrape:
    """`/metrics` of `service`, on a new connection or through a pinned one."""
    if via is None:
        response = httpx.get(service.url + "/metrics", timeout=10)
        assert response.status_code == 200, response.text[:300]
        assert response.headers["content-type"].startswith("text/plain")
        return parse_scrape(response.text)
    status, headers, body = via.request("GET", "/metrics")
    assert status == 200, body[:300]
    assert headers["content-type"].startswith("text/plain")
    return parse_scrape(body.decode())


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
        text = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


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
