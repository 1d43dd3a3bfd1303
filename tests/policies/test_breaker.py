"""The circuit breaker on /guarded: 3 failures in a row open it for 2 s.

Each gunicorn worker has its own breaker and trips it on what it sees itself, so the
test talks to one worker on purpose, over one keep-alive connection. The mock's request
count comes from its own /metrics (requests to its /status/{code} route, all workers).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tests.harness.pinning import PinnedConnection, Reply, connect
from tests.harness.scrape import scrape

from .support import Stack, median_ms

# From tests/policies/routes.yaml, route `guarded`.
CONSECUTIVE_FAILURES = 3
OPEN_SECONDS = 2.0
STATE = {"closed": 0, "half_open": 1, "open": 2}
FAIL_FAST_REQUESTS = 30
FAIL_FAST_MEDIAN_MS = 20.0


@pytest.fixture
def pinned(stack: Stack) -> Iterator[PinnedConnection]:
    conn = connect(stack.gateway)
    try:
        yield conn
    finally:
        conn.close()


def mock_status_requests(stack: Stack) -> float:
    return scrape(stack.mock).total("http_server_requests_total", route="/status/{code}")


def circuit_state(stack: Stack, worker_pid: int) -> float:
    states = scrape(stack.gateway).by_label("gateway_circuit_state", "pid", upstream=stack.upstream)
    assert str(worker_pid) in states, f"no gateway_circuit_state for worker {worker_pid}: {states}"
    return states[str(worker_pid)]


def logged_transitions(stack: Stack) -> list[str]:
    return [
        line["to"]
        for line in stack.gateway.log_lines()
        if line.get("logger") == "gateway.breaker" and line.get("upstream") == stack.upstream
    ]


def transitions(stack: Stack) -> dict[str, float]:
    return scrape(stack.gateway).by_label(
        "gateway_circuit_transitions_total", "to", upstream=stack.upstream
    )


def trip(pinned: PinnedConnection) -> float:
    """Send the failures that open the breaker; returns when the last answer arrived."""
    for n in range(CONSECUTIVE_FAILURES):
        reply = pinned.request("GET", "/guarded/status/503")
        # The mock's own 503 passes through unchanged while the breaker is closed.
        assert reply.status == 503, f"failure {n + 1}: {reply.describe()}"
        assert reply.json()["type"] == "urn:platform:problem:requested-status", reply.describe()
    return time.monotonic()


def fail_fast(pinned: PinnedConnection, count: int) -> list[float]:
    """`count` requests to a healthy path while open: each must be refused at once."""
    seconds: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        reply = pinned.request("GET", "/guarded/status/200")
        seconds.append(time.perf_counter() - started)
        assert_circuit_open(reply)
    return seconds


def assert_circuit_open(reply: Reply) -> None:
    assert reply.status == 503, reply.describe()
    assert reply.headers["content-type"] == "application/problem+json", reply.headers
    problem = reply.json()
    assert problem["type"] == "urn:platform:problem:circuit-open", problem
    assert problem["status"] == 503
    assert 1 <= int(reply.headers["retry-after"]) <= OPEN_SECONDS, reply.headers


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def test_breaker_opens_fails_fast_and_closes_after_a_good_probe(
    stack: Stack, pinned: PinnedConnection
) -> None:
    worker = pinned.worker_pid
    assert circuit_state(stack, worker) == STATE["closed"]
    transitions_before = transitions(stack)
    logged_before = len(logged_transitions(stack))
    mock_before = mock_status_requests(stack)

    # Closed: failures reach the mock until there are CONSECUTIVE_FAILURES in a row.
    last_failure = trip(pinned)
    mock_tripped = mock_status_requests(stack)
    assert mock_tripped - mock_before == CONSECUTIVE_FAILURES
    assert circuit_state(stack, worker) == STATE["open"]

    # Open: refused by the gateway within milliseconds; the mock sees nothing.
    latencies = fail_fast(pinned, FAIL_FAST_REQUESTS)
    median, worst = median_ms(latencies), max(latencies) * 1000
    print(f"\nbreaker fail-fast: median {median:.2f} ms, max {worst:.2f} ms over {len(latencies)}")
    assert median < FAIL_FAST_MEDIAN_MS, f"median {median:.1f} ms while open"
    assert mock_status_requests(stack) == mock_tripped, "requests reached the mock while open"

    # A failed half-open probe opens it again for another OPEN_SECONDS.
    sleep_until(last_failure + OPEN_SECONDS + 0.05)
    probe = pinned.request("GET", "/guarded/status/503")
    assert probe.status == 503, probe.describe()
    assert probe.json()["type"] == "urn:platform:problem:requested-status", "no probe was let in"
    reopened = time.monotonic()
    assert mock_status_requests(stack) == mock_tripped + 1, "not exactly one probe"
    assert circuit_state(stack, worker) == STATE["open"]
    fail_fast(pinned, 3)
    assert mock_status_requests(stack) == mock_tripped + 1

    # A good probe after the cool-down closes it; traffic flows again.
    sleep_until(reopened + OPEN_SECONDS + 0.05)
    probe = pinned.request("GET", "/guarded/status/200")
    assert probe.status == 200, f"the half-open probe was not let through: {probe.describe()}"
    assert circuit_state(stack, worker) == STATE["closed"]
    for _ in range(5):
        reply = pinned.request("GET", "/guarded/status/200")
        assert reply.status == 200, reply.describe()
    assert mock_status_requests(stack) == mock_tripped + 1 + 6

    # Every transition counted once: open, half-open, open, half-open, closed.
    after = transitions(stack)
    entered = {to: after.get(to, 0) - transitions_before.get(to, 0) for to in STATE}
    assert entered == {"open": 2, "half_open": 2, "closed": 1}, entered
    # ... and logged once each, by the worker that made it.
    logged = logged_transitions(stack)[logged_before:]
    assert logged == ["open", "half_open", "open", "half_open", "closed"], logged
