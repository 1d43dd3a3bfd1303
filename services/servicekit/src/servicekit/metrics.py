"""Prometheus metrics that stay exact under several gunicorn workers.

Under gunicorn every worker is its own process, so each keeps its samples in files in
`PROMETHEUS_MULTIPROC_DIR` and every scrape merges them afresh (`MultiProcessCollector`
in a new registry per scrape). gunicorn.conf.py wipes the directory when the master
starts and marks dead workers, so counters never go backwards when a worker is replaced:
a dead worker's counts stay in the sum. Every gauge states how workers combine.

Without `PROMETHEUS_MULTIPROC_DIR` (tests, `uvicorn --reload`) the metrics live in the
registry handed in, so tests can build as many apps as they like.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from servicekit.middleware import StatusRecorder, route_label

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets from 1 ms to 30 s: a proxy hop is milliseconds, a slow upstream seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


class HttpServerMetrics:
    """RED metrics of one service's HTTP server, labelled by route template."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_server_requests_total",
            "Requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Time from request start to the end of the response, by method and route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "http_server_requests_in_flight",
            "Requests being served right now, summed over live workers.",
            registry=registry,
            multiprocess_mode="livesum",
        )


class MetricsMiddleware:
    """Counts and times every request except scrapes of /metrics itself."""

    def __init__(self, app: ASGIApp, *, metrics: HttpServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorder = StatusRecorder(send)
        metrics = self.metrics
        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recorder)
        finally:
            metrics.in_flight.dec()
            route = route_label(scope)
            method = scope["method"]
            status = recorder.final_status(scope)
            metrics.requests.labels(method, route, str(status)).inc()
            metrics.duration.labels(method, route).observe(time.perf_counter() - start)


def new_registry() -> CollectorRegistry:
    """The registry an app records into when none is injected.

    Under gunicorn the samples go to the multiprocess files whatever the registry, and
    `render` collects them; otherwise this process's CPU and memory are included.
    """
    registry = CollectorRegistry()
    if multiprocess_dir() is None:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The exposition text for one scrape: all workers' samples when under gunicorn."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(registry)
    scrape = CollectorRegistry()
    MultiProcessCollector(scrape, path=str(directory))  # type: ignore[no-untyped-call]
    scrape.register(WorkerProcessCollector(directory))
    return generate_latest(scrape)


_PID_IN_NAME = re.compile(r"_(\d+)\.db$")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class WorkerProcessCollector(Collector):
    """CPU, memory and open files of every live worker, labelled by pid.

    The default process collector sees only the process that answers the scrape. The
    live workers are the ones that own a `gauge_live*` file (gunicorn's `child_exit`
    removes a dead worker's), and /proc tells the rest.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def live_pids(self) -> list[int]:
        pids = set()
        for path in self.directory.glob("gauge_live*_*.db"):
            match = _PID_IN_NAME.search(path.name)
            if match:
                pids.add(int(match.group(1)))
        return sorted(pids)

    def collect(self) -> Iterable[Metric]:
        cpu = CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU time of each worker.", labels=["pid"]
        )
        rss = GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of each worker.", labels=["pid"]
        )
        fds = GaugeMetricFamily(
            "process_open_fds", "Open file descriptors of each worker.", labels=["pid"]
        )
        for pid in self.live_pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                open_fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, IndexError, ValueError):
                continue  # exited between the listing and the read
            label = [str(pid)]
            cpu.add_metric(label, (int(stat[11]) + int(stat[12])) / _CLOCK_TICKS)
            rss.add_metric(label, pages * _PAGE_SIZE)
            fds.add_metric(label, open_fds)
        yield from (cpu, rss, fds)


def prepare_multiprocess_dir() -> None:
    """In the gunicorn master before any worker starts: empty the samples directory.

    Files left by an earlier run would otherwise be summed into this one's counters.
    """
    directory = multiprocess_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink()


def worker_exited(pid: int) -> None:
    """In the gunicorn master when a worker exits: drop its live gauges."""
    if multiprocess_dir() is not None:
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


def pin_worker_pid() -> bool:
    """In a gunicorn worker right after fork: stop prometheus_client asking for the pid.

    In multiprocess mode every `inc` and `observe` calls `os.getpid()` (a system call)
    to notice a fork; a gunicorn worker never forks again, so its pid is fixed here, for
    every metric value created from now on. Done only when the master made no metric
    values of its own (no `*_<master pid>.db` file): those would reopen this worker's
    files through a second, unpinned value class. Returns whether the pid was pinned.
    """
    directory = multiprocess_dir()
    if directory is None or any(directory.glob(f"*_{os.getppid()}.db")):
        return False
    pid = os.getpid()
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid)  # type: ignore[no-untyped-call]
    return True
