"""Real processes on loopback: the gateway and the mock under gunicorn, as in production,
and a recording upstream stub in this process.

Each service runs in its own session (so a test can signal the master, and teardown
can kill whatever is left), writes its output to a file under `tmp_path`, and is up
once `/livez` answers. Ports are free ones picked at start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

REPO = Path(__file__).resolve().parents[4]
GUNICORN = Path(sys.executable).parent / "gunicorn"
START_WITHIN_SECONDS = 30


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Service:
    """One gunicorn master and its workers."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_until_up(self, workers: int = 2) -> None:
        """Until /readyz answers and every worker has started (a signal sent to a worker
        still booting would find gunicorn's default handlers)."""
        deadline = time.monotonic() + START_WITHIN_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited at start:\n{self.output()[-3000:]}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready and self.output().count("Application startup complete") >= workers:
                return
            time.sleep(0.05)
        pytest.fail(f"{self.name} did not start:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_service(
    name: str, app: str, config: Path, *, env: dict[str, str], tmp_path: Path, port: int
) -> Service:
    metrics = tmp_path / f"{name}-metrics"
    metrics.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "MOCK_"))}
    clean.update({"PROMETHEUS_MULTIPROC_DIR": str(metrics), "OTEL_TRACES_EXPORTER": "none", **env})
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", str(config), app],
            cwd=REPO,
            env=clean,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(name, port, process, log)
    try:
        service.wait_until_up()
    except BaseException:
        service.kill()
        raise
    return service


def start_mock(tmp_path: Path, **env: str) -> Service:
    port = unused_port()
    return start_service(
        "mock",
        "downstream_mock.app:create_app()",
        REPO / "services" / "downstream-mock" / "gunicorn.conf.py",
        env={"MOCK_HOST": "127.0.0.1", "MOCK_PORT": str(port), "MOCK_WORKERS": "2", **env},
        tmp_path=tmp_path,
        port=port,
    )


def start_gateway(tmp_path: Path, routes: str, **env: str) -> Service:
    port = unused_port()
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(textwrap.dedent(routes), encoding="utf-8")
    return start_service(
        "gateway",
        "gateway.app:create_app()",
        REPO / "services" / "gateway" / "gunicorn.conf.py",
        env={
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_WORKERS": "2",
            "GATEWAY_ROUTES_FILE": str(routes_file),
            **env,
        },
        tmp_path=tmp_path,
        port=port,
    )


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool


@dataclass
class StubUpstream:
    """An upstream that answers 200 to everything and records what reached it.

    h11, not httptools: a second, independent parser, as a real upstream would be.
    """

    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        seen = Seen(scope["method"], scope["path"], list(scope["headers"]), b"", False)
        self.seen.append(seen)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            seen.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        seen.complete = True
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@pytest.fixture(scope="module")
def stub_upstream() -> Iterator[StubUpstream]:
    stub = StubUpstream(port=unused_port())
    config = uvicorn.Config(
        stub, host="127.0.0.1", port=stub.port, http="h11", lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield stub
    server.should_exit = True
    thread.join(5)
