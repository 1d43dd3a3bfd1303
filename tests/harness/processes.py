"""Free ports, bounded waits, and gunicorn services started and stopped by their PID.

Everything listens on 127.0.0.1, every wait has a deadline, and every process is stopped
by the PID it was started with (never by name).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
WORKERS = 2
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
    """A free TCP port on 127.0.0.1 (the kernel's choice; released before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM `process`, wait (bounded), then SIGKILL it if it is still there."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def tail_file(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file; "" while it does not exist."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------- gunicorn


@dataclass(frozen=True)
class GunicornApp:
    """What to run under gunicorn, as scripts/lib/services.sh does."""

    prefix: str  # of its settings variables: <PREFIX>_PORT, <PREFIX>_WORKERS, ...
    config: Path
    app: str


MOCK_APP = GunicornApp(
    "MOCK", ROOT / "services/downstream-mock/gunicorn.conf.py", "downstream_mock.app:create_app()"
)
GATEWAY_APP = GunicornApp(
    "GATEWAY", ROOT / "services/gateway/gunicorn.conf.py", "gateway.app:create_app()"
)


@dataclass
class Service:
    """One gunicorn master (and its workers) that a suite started."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path  # the JSON lines the app writes (`<PREFIX>_LOG_FILE`)
    stdout_file: Path  # everything the master and its workers print
    # Every worker seen, kept as psutil handles: `is_running` tells a reused PID apart.
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

    def wait_workers(self, count: int = WORKERS, *, exclude: int | None = None) -> set[int]:
        """Until exactly `count` live workers, none of them `exclude`; their PIDs."""

        def check() -> set[int] | None:
            pids = self.worker_pids()
            return pids if len(pids) == count and exclude not in pids else None

        return wait_for(f"{self.name} to have {count} workers", check, timeout=START_TIMEOUT)

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines in the app's log file (and its rotated backups, oldest first).

        A last line still being written (no newline yet) is left for the next call.
        """
        lines: list[dict[str, Any]] = []
        backups = sorted(self.log_file.parent.glob(self.log_file.name + ".*"), reverse=True)
        for path in [*backups, self.log_file]:
            if not path.exists():
                continue
            complete = path.read_text(encoding="utf-8").split("\n")[:-1]
            lines.extend(json.loads(raw) for raw in complete if raw.strip())
        return lines

    def tail(self, lines: int = 40) -> str:
        """The end of what the master and its workers printed."""
        return tail_file(self.stdout_file, lines)

    def stop(self) -> None:
        """SIGTERM the master, wait (bounded), then SIGKILL whatever is left, by PID."""
        self.worker_pids()
        stop_process(self.process)
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


def start_service(name: str, app: GunicornApp, *, workdir: Path, env: Mapping[str, str]) -> Service:
    """Start `app` under gunicorn with WORKERS workers; wait for /readyz and the workers.

    Its files are in `workdir`, named after `name`. A port taken between choosing and
    binding it is retried with another one.
    """
    prefix = app.prefix
    for attempt in range(3):
        port = free_port()
        log_file = workdir / f"{name}.log"
        stdout_file = workdir / f"{name}.stdout"
        service_env = service_environment(
            {
                **env,
                f"{prefix}_PORT": str(port),
                f"{prefix}_WORKERS": str(WORKERS),
                f"{prefix}_LOG_FILE": str(log_file),
                # Stop quickly at the end of the session: nothing balances load here.
                f"{prefix}_GRACEFUL_TIMEOUT": "5",
                f"{prefix}_DRAIN_DELAY": "0",
                # PROMETHEUS_MULTIPROC_DIR is left to gunicorn.conf.py, as in production:
                # the metrics tests then prove that default path merges the workers.
            }
        )
        with stdout_file.open("ab") as out:
            process = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", str(app.config), app.app],
                cwd=ROOT,
                env=service_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        service = Service(name, port, process, log_file, stdout_file)
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


@contextlib.contextmanager
def gateway_with_mock(
    workdir: Path, *, env: Mapping[str, str], gateway_env: Mapping[str, str]
) -> Iterator[tuple[Service, Service]]:
    """The downstream-mock, then the gateway in front of it (as MOCK_UPSTREAM): `(gateway,
    mock)`. Both get `env`, the gateway `gateway_env` too; both are stopped, the gateway
    first, on the way out, also when the start-up failed.
    """
    started: list[Service] = []
    try:
        mock = start_service("downstream-mock", MOCK_APP, workdir=workdir, env=env)
        started.append(mock)
        gateway = start_service(
            "gateway",
            GATEWAY_APP,
            workdir=workdir,
            env={**env, "MOCK_UPSTREAM": mock.url, **gateway_env},
        )
        started.append(gateway)
        yield gateway, mock
    finally:
        for service in reversed(started):
            service.stop()


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
