"""Processes the benchmark starts, and what it reads from /proc about them.

Everything started here is stopped by the PID it got at start (and the worker PIDs seen
under it), never by name: SIGTERM first, SIGKILL after a bound. `Stack` owns them all
and is a context manager, so a failure or Ctrl-C stops everything too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

STOP_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the benchmark dies, even by SIGKILL.

    The safety net under `Stack.stop_all`, for the one exit no `finally` survives.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def terminate_on_signals() -> None:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C, so `finally` blocks stop our servers."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel's choice; released before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StartError(RuntimeError):
    """A service did not come up; the message says which and where its log is."""


@dataclass
class Service:
    """One started server: its master PID, where it listens and where it logs."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    backend: bool = False  # stopped after everything else

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def group(self) -> list[psutil.Process]:
        """The master and every process under it (gunicorn or nginx workers)."""
        try:
            master = psutil.Process(self.pid)
            return [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> list[psutil.Process]:
        return self.group()[1:]

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def cpu_seconds(
    processes: Sequence[psutil.Process], *, system_only: bool = False
) -> dict[int, float]:
    """user + system (or only system) CPU seconds per PID, from /proc/<pid>/stat."""
    out: dict[int, float] = {}
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            out[proc.pid] = times.system if system_only else times.user + times.system
    return out


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds spent between two `cpu_seconds` snapshots by processes alive in both.

    A worker that started in between counts from zero; one that died is lost (and would
    show up as a restart in the service's log).
    """
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def rss_bytes(processes: Sequence[psutil.Process]) -> int:
    total = 0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


class RssSampler:
    """Samples the summed RSS of a service's processes in a thread; `peak` is the maximum.

    The process list is read again on every sample, so a worker that (re)starts during
    the run counts.
    """

    def __init__(
        self, service: Service, *, workers_only: bool = False, interval: float = 0.02
    ) -> None:
        self._service = service
        self._workers_only = workers_only
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{service.name}", daemon=True)
        self.before = 0
        self.peak = 0
        self.samples = 0

    def _processes(self) -> list[psutil.Process]:
        return self._service.workers() if self._workers_only else self._service.group()

    def sample(self) -> int:
        value = rss_bytes(self._processes())
        self.peak = max(self.peak, value)
        self.samples += 1
        return value

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.before = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


@dataclass
class Stack:
    """Owns every process the benchmark starts; leaving the context stops them all."""

    workdir: Path
    services: list[Service] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        backend: bool = False,
    ) -> Service:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                # Its own session: a Ctrl-C in the terminal reaches only us, and we stop
                # the services in order instead of racing them.
                start_new_session=True,
                # Safe here: services are started before any sampler thread runs.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        service = Service(name=name, popen=popen, port=port, log_path=log_path, backend=backend)
        self.services.append(service)
        return service

    def wait_ready(self, service: Service, path: str, *, timeout: float = 60.0) -> None:
        """Poll `path` until it answers 200; fail early if the process died."""
        deadline = time.monotonic() + timeout
        url = service.base_url + path
        while True:
            if service.popen.poll() is not None:
                raise StartError(
                    f"{service.name} exited with {service.popen.returncode} before {url} "
                    f"answered; its log ({service.log_path}) ends with:\n{service.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise StartError(
                    f"{service.name} did not answer {url} within {timeout:.0f} s; its log "
                    f"({service.log_path}) ends with:\n{service.tail()}"
                )
            time.sleep(0.1)

    def stop_all(self) -> None:
        """Stop the proxies, then what they talk to (the mock, the OTLP sink).

        In that order so that a proxy's last requests and its final span flush still
        find their upstreams. Each phase: SIGTERM, wait up to the bound, SIGKILL.
        """
        front = [s for s in self.services if not s.backend]
        back = [s for s in self.services if s.backend]
        for phase in (front, back):
            _stop(phase)
        self.services.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def _stop(services: list[Service]) -> None:
    workers: list[psutil.Process] = []
    for service in services:
        # Remember the workers too: if the master has to be killed, they are next.
        workers.extend(service.workers())
        if service.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for service in services:
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        if service.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGKILL)
            service.popen.wait(timeout=5)
    for worker in workers:
        _kill_if_left(worker, deadline)


def _kill_if_left(worker: psutil.Process, deadline: float) -> None:
    """A worker that outlived its master: wait out the bound, then SIGKILL it.

    psutil checks the process's start time before signalling, so a PID reused by an
    unrelated process in the meantime is never hit.
    """
    try:
        worker.wait(timeout=max(0.1, deadline - time.monotonic()))
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    except psutil.NoSuchProcess:
        pass
