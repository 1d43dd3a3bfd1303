"""Graceful drain on real processes: SIGTERM to the gateway's master under load.

The gateway (2 workers, drain_delay 1 s, graceful_timeout 5 s) sits in front of the mock.
Clients run for a few seconds: slow ones on kept-alive connections (/mock/delay/0.5),
fast ones with a new connection per request, and a /readyz poller. Then SIGTERM.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Service, start_gateway, start_mock

DRAIN_DELAY = 1.0
GRACE = 5
# Clock and scheduling slack for assertions about when something happened.
SLACK = 0.2


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    status: int | None  # None: no response (connection refused, reset, closed)
    error: str = ""


class Load:
    """Client threads that record every request until `stop` is set."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, kind: str, path: str, *, keep_alive: bool, pause: float = 0.0) -> None:
        thread = threading.Thread(target=self._run, args=(kind, path, keep_alive, pause))
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self, kind: str, path: str, keep_alive: bool, pause: float) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            started = time.monotonic()
            status: int | None = None
            error = ""
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                status = response.status
                if not keep_alive or response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = None
                time.sleep(0.02)  # refused at once after the drain: do not spin
            with self._lock:
                self.outcomes.append(Outcome(kind, started, time.monotonic(), status, error))
            if pause:
                time.sleep(pause)
        if conn is not None:
            conn.close()

    def of(self, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == kind]


def wait_for_exit(service: Service) -> float:
    service.process.wait(GRACE + 5)
    return time.monotonic()


def one_request(port: int, path: str) -> Outcome:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.monotonic()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return Outcome("straddler", started, time.monotonic(), response.status)
    except (OSError, http.client.HTTPException) as exc:
        return Outcome("straddler", started, time.monotonic(), None, repr(exc))
    finally:
        conn.close()


@pytest.fixture
def services(tmp_path: Path) -> tuple[Service, Service]:
    mock = start_mock(tmp_path)
    try:
        gateway = start_gateway(
            tmp_path,
            f"""
            routes:
              - name: mock
                prefix: /mock
                upstream: {mock.url}
                timeout: {{connect: 2, read: 10, total: 20}}
            """,
            GATEWAY_DRAIN_DELAY=str(DRAIN_DELAY),
            GATEWAY_GRACEFUL_TIMEOUT=str(GRACE),
        )
    except BaseException:
        mock.kill()
        raise
    yield mock, gateway
    gateway.kill()
    mock.kill()


def test_sigterm_under_load_drains_and_exits_zero(services: tuple[Service, Service]) -> None:
    _, gateway = services
    load = Load(gateway.port)
    for _ in range(3):
        load.start("slow", "/mock/delay/0.5", keep_alive=True)
    for _ in range(3):
        load.start("fast-new-connection", "/mock/echo", keep_alive=False)
    load.start("fast-keep-alive", "/mock/echo", keep_alive=True)
    load.start("readyz", "/readyz", keep_alive=False, pause=0.02)
    exited: list[float] = []
    watcher = threading.Thread(target=lambda: exited.append(wait_for_exit(gateway)))
    try:
        time.sleep(1.0)
        sent_at = time.monotonic()
        os.kill(gateway.process.pid, signal.SIGTERM)
        watcher.start()
        # A request sure to be in flight when the gateway stops accepting.
        time.sleep(DRAIN_DELAY - 0.3)
        straddler = one_request(gateway.port, "/mock/delay/0.6")
        time.sleep(1.0)
    finally:
        load.join()
    watcher.join(GRACE + 5)
    code = gateway.process.returncode
    exited_after = exited[0] - sent_at
    output = gateway.output()
    stop_accepting = sent_at + DRAIN_DELAY

    # The process exits 0 within the grace timeout, without SIGKILL or tracebacks, and
    # each worker left through gunicorn's normal exit (its exit hooks ran).
    assert code == 0, output[-3000:]
    assert exited_after < GRACE, output[-3000:]
    assert "Traceback" not in output
    assert "SIGKILL" not in output
    assert output.count("Worker exiting") == 2, output[-3000:]

    # /readyz turns 503 at once, and stays so until the gateway stops accepting.
    probes = load.of("readyz")
    answered_ready = [o for o in probes if o.status == 200]
    draining = [o for o in probes if o.status == 503]
    assert answered_ready, "the gateway was never ready"
    assert draining, "readiness never turned 503"
    flipped_at = min(o.started for o in draining)
    assert flipped_at - sent_at < SLACK
    assert all(o.started < sent_at + SLACK for o in answered_ready)
    assert all(o.status == 503 for o in probes if sent_at + SLACK < o.started < stop_accepting)

    # Every request sent before the gateway stopped accepting got its 200: before the
    # flip, during the delay (new connections too), and those still in flight after it.
    traffic = [o for o in load.outcomes if o.kind != "readyz"]
    before_stop = [o for o in traffic if o.started < stop_accepting - SLACK]
    failed = [o for o in before_stop if o.status != 200]
    assert not failed, failed[:5]
    during_delay = [o for o in before_stop if o.started > sent_at + SLACK]
    assert any(o.kind == "fast-new-connection" for o in during_delay), "no new connection served"
    assert len(during_delay) >= 10
    finished_late = [o for o in traffic if o.status == 200 and o.ended > stop_accepting + 0.1]
    assert straddler.status == 200, straddler
    assert straddler.ended > stop_accepting + 0.1

    # For the record (pytest -s): the numbers the closing note asks for.
    refused = [o for o in traffic if o.status is None]
    print(
        f"drain: readiness 503 after {1000 * (flipped_at - sent_at):.0f} ms; "
        f"{len(before_stop)} requests before stop-accepting, all 200 "
        f"({len(during_delay)} during the delay); {len(finished_late)} finished after it; "
        f"{len(refused)} refused afterwards; exit 0 after {exited_after:.2f} s"
    )

    # Afterwards a request either got its 200 or no answer at all (refused): never an
    # error status and never a cut-off response.
    assert all(o.status in (200, None) for o in traffic)
    assert all(o.status == 200 for o in traffic if o.ended < stop_accepting)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_a_quick_shutdown_skips_the_drain(tmp_path: Path, sig: signal.Signals) -> None:
    # gunicorn's quick shutdown sends SIGQUIT to the workers. uvicorn-worker's own handler
    # only set a flag nobody reads, so workers lived on until gunicorn's SIGKILL.
    gateway = start_gateway(
        tmp_path,
        """
        routes:
          - {name: nowhere, prefix: /nowhere, upstream: "http://127.0.0.1:9"}
        """,
        GATEWAY_DRAIN_DELAY="8",
        GATEWAY_GRACEFUL_TIMEOUT="20",
    )
    try:
        sent_at = time.monotonic()
        os.kill(gateway.process.pid, sig)
        code = gateway.process.wait(15)
        took = time.monotonic() - sent_at
    finally:
        gateway.kill()
    output = gateway.output()
    assert code == 0, output[-3000:]
    assert took < 6, output[-3000:]  # neither the drain delay (8 s) nor SIGKILL (20 s)
    assert "SIGKILL" not in output
    assert output.count("Worker exiting") == 2, output[-3000:]
