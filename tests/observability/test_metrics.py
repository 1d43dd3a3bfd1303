"""Metrics that are exact under several gunicorn workers, and stay so when one dies.

Requests are sent over connections pinned to each worker, so both workers count some of
them, and /metrics is scraped through each worker too: whichever worker answers the
scrape, it must report the sum over all of them.
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import yaml
from tests.harness.pinning import Pinned, PinnedConnection, pin_workers
from tests.harness.processes import WORKERS, Service, wait_for
from tests.harness.scrape import Scrape, scrape

from .support import Stack

N = 37
PROCESS_FAMILIES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
)
MONOTONIC_SUFFIXES = ("_total", "_count", "_bucket", "_sum")


@pytest.fixture
def gateway_pins(stack: Stack) -> Iterator[Pinned]:
    pins = pin_workers(stack.gateway)
    yield pins
    pins.close()


@pytest.fixture
def mock_pins(stack: Stack) -> Iterator[Pinned]:
    pins = pin_workers(stack.mock)
    yield pins
    pins.close()


def settle(
    service: Service, check: str, value: float, compute: Callable[[Scrape], float]
) -> Scrape:
    """Scrape until `compute(scrape)` reaches `value`: counts land just after the response.

    The middleware counts a request when its response has been sent, so the client can
    see the response a moment before the counter moves; never longer than that.
    """

    def reached() -> Scrape | None:
        current = scrape(service)
        got = compute(current)
        assert got <= value, f"{service.name} {check}: {got} > {value} (counted twice?)"
        return current if got == value else None

    return wait_for(f"{service.name} {check} to reach {value}", reached, timeout=10)


def send(pins: Pinned, count: int, path: str) -> int:
    """`count` GETs spread round-robin over every worker; the body bytes received."""
    conns: list[PinnedConnection] = list(pins)
    assert len(conns) == WORKERS
    received = 0
    for i in range(count):
        status, headers, body = conns[i % len(conns)].request("GET", path)
        assert status == 200, f"GET {path} -> {status}: {body[:200]!r}"
        assert "content-encoding" not in headers
        received += len(body)
    return received


def gateway_totals(s: Scrape) -> dict[str, float]:
    return {
        "requests": s.value("http_server_requests_total", method="GET", route="mock", status="200"),
        "duration_count": s.value(
            "http_server_request_duration_seconds_count", method="GET", route="mock"
        ),
        "duration_inf": s.value(
            "http_server_request_duration_seconds_bucket", method="GET", route="mock", le="+Inf"
        ),
        "upstream_ok": s.value("gateway_upstream_requests_total", outcome="ok", route="mock"),
        "upstream_latency_count": s.value("gateway_upstream_response_seconds_count", route="mock"),
        "response_bytes": s.value("gateway_response_body_bytes_total", route="mock"),
    }


def mock_totals(s: Scrape) -> dict[str, float]:
    return {
        "requests": s.value(
            "http_server_requests_total", method="GET", route="/echo", status="200"
        ),
        "duration_count": s.value(
            "http_server_request_duration_seconds_count", method="GET", route="/echo"
        ),
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before}


def test_exactly_n_requests_counted_over_all_workers(
    stack: Stack, gateway_pins: Pinned, mock_pins: Pinned
) -> None:
    gw_before = gateway_totals(scrape(stack.gateway))
    mock_before = mock_totals(scrape(stack.mock))

    body_bytes = send(gateway_pins, N, "/mock/echo")

    settle(
        stack.gateway,
        "requests on route mock",
        gw_before["requests"] + N,
        lambda s: gateway_totals(s)["requests"],
    )
    settle(
        stack.mock,
        "requests on /echo",
        mock_before["requests"] + N,
        lambda s: mock_totals(s)["requests"],
    )
    # Through every worker of each service: each must report the sum over all workers.
    for conn in gateway_pins:
        got = delta(gateway_totals(scrape(stack.gateway, via=conn)), gw_before)
        assert got == {
            "requests": N,
            "duration_count": N,
            "duration_inf": N,
            "upstream_ok": N,
            "upstream_latency_count": N,
            "response_bytes": body_bytes,
        }, f"scraped through gateway worker {conn.worker_pid}"
    for conn in mock_pins:
        got = delta(mock_totals(scrape(stack.mock, via=conn)), mock_before)
        assert got == {"requests": N, "duration_count": N}, f"mock worker {conn.worker_pid}"
    # And nothing arrives late: the counts stay put.
    time.sleep(0.5)
    assert delta(gateway_totals(scrape(stack.gateway)), gw_before)["requests"] == N
    assert delta(mock_totals(scrape(stack.mock)), mock_before)["requests"] == N


def _openapi_templates(service: Service) -> set[str]:
    paths = httpx.get(service.url + "/openapi.json", timeout=10).json()["paths"]
    return set(paths)


def test_labels_are_route_templates_never_raw_paths(stack: Stack) -> None:
    ids = [secrets.randbelow(10**9) + 10**9 for _ in range(5)]
    junk = f"no-such-{secrets.token_hex(4)}"
    before = scrape(stack.mock)
    gw_before = scrape(stack.gateway)
    with httpx.Client(base_url=stack.gateway.url, timeout=10) as client:
        for item_id in ids:
            assert client.get(f"/mock/items/{item_id}").status_code == 404
        assert client.get(f"/mock/{junk}/x").status_code == 404  # the mock has no such route
        assert client.get(f"/{junk}").status_code == 404  # the gateway has no such route

    template = "/items/{item_id}"
    labels = {"method": "GET", "route": template, "status": "404"}
    after = settle(
        stack.mock,
        f"404s on {template}",
        before.value("http_server_requests_total", **labels) + len(ids),
        lambda s: s.value("http_server_requests_total", **labels),
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert after.value("http_server_requests_total", **unmatched) == (
        before.value("http_server_requests_total", **unmatched) + 1
    )
    gw_after = settle(
        stack.gateway,
        "unmatched 404s",
        gw_before.value("http_server_requests_total", **unmatched) + 1,
        lambda s: s.value("http_server_requests_total", **unmatched),
    )
    mock_404 = {"method": "GET", "route": "mock", "status": "404"}
    assert gw_after.value("http_server_requests_total", **mock_404) == (
        gw_before.value("http_server_requests_total", **mock_404) + len(ids) + 1
    )

    # Every route label is a template the service declares (or `unmatched`).
    mock_allowed = _openapi_templates(stack.mock) | {"unmatched"}
    route_table = yaml.safe_load(stack.routes_file.read_text())
    gateway_allowed = (
        {route["name"] for route in route_table["routes"]}
        | _openapi_templates(stack.gateway)
        | {"unmatched"}
    )
    assert template in mock_allowed
    for service, current, allowed in (
        ("mock", after, mock_allowed),
        ("gateway", gw_after, gateway_allowed),
    ):
        routes = set().union(
            *(current.label_values(name, "route") for name in current.sample_names)
        )
        assert routes, f"{service}: no route labels at all"
        assert routes <= allowed, f"{service}: raw paths as labels: {sorted(routes - allowed)}"
        text = current.text
        for item_id in ids:
            assert str(item_id) not in text, f"{service}: a raw id leaked into a label"
        assert junk not in text


def _process_pids(s: Scrape) -> dict[str, set[int]]:
    return {name: {int(pid) for pid in s.label_values(name, "pid")} for name in PROCESS_FAMILIES}


def _live_process_metrics(service: Service) -> Scrape | None:
    workers = service.worker_pids()
    current = scrape(service)
    pids = _process_pids(current)
    return current if all(found == workers for found in pids.values()) else None


def _in_flight(s: Scrape) -> tuple[float, float]:
    return (
        s.value("http_server_requests_in_flight"),
        s.value("gateway_upstream_requests_in_flight", route="mock"),
    )


def test_killed_worker_no_counter_goes_backwards(stack: Stack, gateway_pins: Pinned) -> None:
    """SIGKILL a worker mid-request: gunicorn replaces it and the metrics stay whole.

    It dies holding a request, so its in-flight gauges read 1 when it dies; only the
    master's `child_exit` (marking it dead) takes them out of the sum again.
    """
    gateway = stack.gateway
    send(gateway_pins, 8, "/mock/echo")
    before = wait_for(
        "process metrics for exactly the live workers",
        lambda: _live_process_metrics(gateway),
        timeout=10,
    )
    workers = gateway.worker_pids()
    assert len(workers) == WORKERS
    victim_conn = next(iter(gateway_pins))
    victim = victim_conn.worker_pid
    assert victim in workers
    assert all(victim in pids for pids in _process_pids(before).values())
    before_counts = gateway_totals(before)
    assert before_counts["requests"] > 0
    assert _in_flight(before) == (0, 0)

    # A slow request on the victim; it ends when the worker is killed under it.
    outcome: list[BaseException | int] = []

    def slow_request() -> None:
        try:
            outcome.append(victim_conn.request("GET", "/mock/delay/3")[0])
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    client = threading.Thread(target=slow_request, daemon=True)
    client.start()
    wait_for(
        "the slow request to be in flight",
        lambda: _in_flight(scrape(gateway)) == (1, 1),
        timeout=10,
    )

    os.kill(victim, signal.SIGKILL)
    client.join(timeout=10)
    assert len(outcome) == 1, "the slow request did not end with its worker"
    assert not isinstance(outcome[0], int), f"the killed worker answered {outcome[0]}"
    gateway_pins.close()
    replaced = gateway.wait_workers(WORKERS, exclude=victim)
    assert len(replaced - workers) == 1, f"workers {workers} -> {replaced}"
    after = wait_for(
        "process metrics to follow the replacement worker",
        lambda: _live_process_metrics(gateway),
        timeout=20,
    )

    # The dead worker is gone from the per-pid process metrics, its replacement is there.
    for name, pids in _process_pids(after).items():
        assert victim not in pids, f"{name} still reports the dead worker"
        assert pids == replaced, f"{name}: {pids} != live workers {replaced}"

    # No counter, histogram count, bucket or sum went down; only the dead worker's own
    # process samples may disappear.
    decreased = []
    for key, value in before.samples.items():
        name, labels = key
        if not name.endswith(MONOTONIC_SUFFIXES):
            continue
        if key not in after.samples:
            vanished = f"{name}{dict(labels)} vanished after a worker died"
            assert name in PROCESS_FAMILIES, vanished
            assert dict(labels).get("pid") == str(victim), vanished
            continue
        if after.samples[key] < value:
            decreased.append(f"{name}{dict(labels)}: {value} -> {after.samples[key]}")
    assert decreased == [], decreased
    assert _in_flight(after) == (0, 0), "the dead worker's in-flight requests are still counted"
    assert gateway_totals(after) == before_counts

    # Counting carries on from the sum, with the new worker's counts added.
    fresh = pin_workers(gateway)
    try:
        assert {conn.worker_pid for conn in fresh} == replaced
        send(fresh, 11, "/mock/echo")
        settle(
            gateway,
            "requests after the replacement",
            before_counts["requests"] + 11,
            lambda s: gateway_totals(s)["requests"],
        )
    finally:
        fresh.close()
