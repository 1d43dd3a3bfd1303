"""What the policies suite runs against: real gunicorn processes, a real Redis, a JWKS server.

Everything listens on 127.0.0.1 on a free port, every wait has a deadline, and every
process is stopped by the PID it was started with (never by name). The style follows
tests/observability/support.py; it is not imported from there so that the two suites
can change independently.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
ROUTES_FILE = Path(__file__).with_name("routes.yaml")
WORKERS = 2
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_INSTALL_HINT = "install it with: apt-get update && apt-get install -y redis-server"

# What the route file's JWT routes expect (tests/policies/routes.yaml).
ISSUER = "https://issuer.policies.test/"
AUDIENCE = "policies-gateway"
REQUIRED_SCOPE = "orders:read"

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


def unique(prefix: str) -> str:
    """A fresh key for the mock's /flaky counters (they are never reset)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


# --------------------------------------------------------------------------- gunicorn


@dataclass
class Service:
    """One gunicorn master (and its workers) that this suite started."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    stdout_file: Path
    # Every worker seen, as psutil handles: `is_running` tells a reused PID apart.
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> set[int]:
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return set()
        live: dict[int, psutil.Process] = {}
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    live[child.pid] = child
        for pid, child in live.items():
            self.seen.setdefault(pid, child)
        return set(live)

    def wait_workers(self, count: int = WORKERS) -> set[int]:
        def check() -> set[int] | None:
            pids = self.worker_pids()
            return pids if len(pids) == count else None

        return wait_for(f"{self.name} to have {count} workers", check, timeout=START_TIMEOUT)

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines the service printed (gunicorn's own plain lines are skipped)."""
        lines = []
        for raw in self.stdout_file.read_text(encoding="utf-8", errors="replace").splitlines():
            if raw.startswith("{"):
                with contextlib.suppress(ValueError):
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
        if not k.startswith(("OTEL_", "GATEWAY_", "MOCK_", "POLICIES_", "PROMETHEUS_MULTIPROC"))
        and k not in {"UNREACHABLE_UPSTREAM", "SERVICEKIT_OWNED_TEMP_DIRS"}
    }
    env.update(extra)
    return env


def start_service(
    name: str, *, prefix: str, config: Path, app: str, workdir: Path, env: Mapping[str, str]
) -> Service:
    """Start one service under gunicorn (as scripts/lib/services.sh does); wait for /readyz.

    A port taken between choosing and binding it is retried with another one.
    """
    for attempt in range(3):
        port = free_port()
        stdout_file = workdir / f"{name}.stdout"
        service_env = service_environment(
            {
                **env,
                f"{prefix}_PORT": str(port),
                f"{prefix}_WORKERS": str(WORKERS),
                # Stop quickly at the end of the session: nothing balances load here.
                f"{prefix}_GRACEFUL_TIMEOUT": "5",
                f"{prefix}_DRAIN_DELAY": "0",
                "OTEL_TRACES_EXPORTER": "none",
                "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"{name}-metrics"),
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
        service = Service(name, port, process, stdout_file)
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


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """Debian's redis-server on loopback, without persistence; stoppable and restartable."""

    def __init__(self, workdir: Path) -> None:
        if not os.access(REDIS_SERVER, os.X_OK):
            raise AssertionError(
                f"{REDIS_SERVER} is missing: the rate-limit tests need a real Redis; "
                + REDIS_INSTALL_HINT
            )
        self.workdir = workdir
        self.port = free_port()
        self.log_file = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on `self.port` (the same port again after `stop`) and wait for PING."""
        # Loopback only, and nothing written to disk: the buckets live as long as the test.
        command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for("redis-server to answer PING", self._ping, timeout=START_TIMEOUT, interval=0.05)

    def _ping(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise AssertionError(f"redis-server exited with {self.process.returncode}: {tail}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


# --------------------------------------------------------------------------- keys and tokens


@dataclass(frozen=True)
class RsaKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str) -> RsaKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: Mapping[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            dict(claims), self.private, algorithm="RS256", headers={"kid": kid or self.kid}
        )


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims the JWT routes accept, valid for 5 minutes; None removes a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "scope": f"{REQUIRED_SCOPE} profile",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def handmade_token(header: Mapping[str, Any], payload: Mapping[str, Any], key: bytes) -> str:
    """A JWS made by hand: PyJWT refuses to sign `none`, or HS256 with a PEM, on purpose."""
    signing_input = (
        _b64(json.dumps(dict(header)).encode()) + "." + _b64(json.dumps(dict(payload)).encode())
    )
    if header.get("alg") == "none":
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def new_hs256_secret() -> str:
    return secrets.token_urlsafe(48)


# --------------------------------------------------------------------------- JWKS server


class JwksServer:
    """Serves one JWKS document at /jwks.json that the test can replace at any time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._document: bytes = b'{"keys": []}'
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the gateway keeps its connection alive

            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self._answer(404, b"{}")
                    return
                with server._lock:
                    server.fetches += 1
                    body = server._document
                self._answer(200, body)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest output is for failures

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def publish(self, *keys: RsaKey) -> None:
        document = json.dumps({"keys": [k.jwk() for k in keys]}).encode()
        with self._lock:
            self._document = document

    def fetch_count(self) -> int:
        with self._lock:
            return self.fetches

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, started or not
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


# --------------------------------------------------------------------------- connections


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; repeats joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        return f"{self.status} {self.body[:300]!r}"


class PinnedConnection:
    """One keep-alive connection to the gateway, served by one worker for its whole life.

    A gunicorn worker keeps every connection it accepted, so every request on this one
    reaches `worker_pid`. A request that would need a new connection (the server closed
    this one) fails the test instead of silently landing on another worker.
    """

    def __init__(self, conn: http.client.HTTPConnection, worker_pid: int) -> None:
        self.conn = conn
        self.worker_pid = worker_pid
        assert conn.sock is not None
        self._local_port: int = conn.sock.getsockname()[1]

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        sock = self.conn.sock
        assert sock is not None, "the server closed this pinned connection"
        assert sock.getsockname()[1] == self._local_port, "the pinned connection was reopened"
        self.conn.request(method, path, body=body, headers=dict(headers or {}))
        response = self.conn.getresponse()
        data = response.read()
        merged: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        reply = Reply(response.status, merged, data)
        assert self.conn.sock is not None, (
            f"the server closed the pinned connection after {method} {path}: {reply.describe()}"
        )
        return reply

    def close(self) -> None:
        self.conn.close()


def _serving_worker(port: int, local_port: int, workers: set[int]) -> int | None:
    for pid in workers:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for c in connections:
            if c.laddr and c.raddr and c.laddr.port == port and c.raddr.port == local_port:
                return pid
    return None


def connect(service: Service) -> PinnedConnection:
    """A keep-alive connection to `service`, with the worker that accepted it."""
    workers = service.wait_workers()
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.request("GET", "/livez")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, f"/livez answered {response.status}"
    assert conn.sock is not None
    local_port = conn.sock.getsockname()[1]
    pid = wait_for(
        f"the {service.name} worker serving local port {local_port}",
        lambda: _serving_worker(service.port, local_port, workers),
        timeout=5,
    )
    return PinnedConnection(conn, pid)


@contextlib.contextmanager
def pinned_to_each_worker(
    service: Service, *, attempts: int = 64
) -> Iterator[list[PinnedConnection]]:
    """One keep-alive connection per live worker of `service`, closed on the way out.

    Connections are opened until every worker has accepted one (which worker accepts is
    the kernel's choice); the spare ones are closed at once.
    """
    workers = service.wait_workers()
    found: dict[int, PinnedConnection] = {}
    try:
        for _ in range(attempts):
            pinned = connect(service)
            if pinned.worker_pid in found:
                pinned.close()
            else:
                found[pinned.worker_pid] = pinned
            if set(found) == workers:
                break
        else:
            raise AssertionError(
                f"{attempts} connections to {service.name} all went to workers"
                f" {sorted(found)}; live workers are {sorted(workers)}"
            )
        yield list(found.values())
    finally:
        for pinned in found.values():
            pinned.close()


# --------------------------------------------------------------------------- metrics

SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Scrape:
    samples: dict[SampleKey, float]

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """`{label value: sample}` for the samples named `name` that have `labels`."""
        wanted = set(labels.items())
        return {
            dict(ls)[label]: v
            for (n, ls), v in self.samples.items()
            if n == name and wanted <= ls and label in dict(ls)
        }


def scrape(url: str) -> Scrape:
    """`/metrics` of the service at `url` (all workers: multiprocess mode)."""
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text[:300]
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples)


@dataclass
class Stack:
    gateway: Service
    mock: Service
    redis: RedisServer
    jwks: JwksServer
    hs256_secret: str
    api_key: str
    rsa_keys: dict[str, RsaKey]  # the keys the JWKS server may publish, by kid
    workdir: Path

    @property
    def upstream(self) -> str:
        """The mock's origin, as the gateway's breaker and budget metrics label it."""
        return self.mock.url


@contextlib.contextmanager
def injected_faults(mock: Service, **faults: float) -> Iterator[None]:
    """Every worker of the mock fails or slows requests as `faults` says, until the end.

    Set and cleared on the mock directly (its /admin is never faulted itself).
    """
    response = httpx.put(mock.url + "/admin/faults", json=faults, timeout=10)
    assert response.status_code == 200, response.text[:300]
    try:
        yield
    finally:
        response = httpx.delete(mock.url + "/admin/faults", timeout=10)
        assert response.status_code == 200, response.text[:300]
