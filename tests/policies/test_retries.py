"""Retries on /retrying: only what is safe to repeat, and never more than the budget allows.

The mock's /flaky/{key}?failures=N fails the first N calls for a key with 503 and counts
every call across its workers; its answer (problem+json or JSON) carries the call count.
Asking the mock directly afterwards tells how many calls the gateway made: the direct
call is the next number.

The budget test runs last in this module: its retries stay in the per-worker budget
window (10 s) after it ends, and a retry the flaky tests need could then be refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from tests.harness.processes import Service
from tests.harness.scrape import scrape

from .support import Stack, injected_faults, unique

# From tests/policies/routes.yaml, route `retrying`.
ATTEMPTS = 3
BUDGET_RATIO = 0.1
BUDGET_MIN_PER_SECOND = 0.5
BUDGET_WINDOW_SECONDS = 10.0
RETRIES = "gateway_upstream_retries_total"


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway.url, timeout=10) as client:
        yield client


def retries(stack: Stack) -> float:
    return scrape(stack.gateway).total(RETRIES, route="retrying")


def calls_so_far(mock: Service, key: str, failures: int) -> int:
    """The calls the mock has counted for `key`, asked directly (this one not included)."""
    response = httpx.get(f"{mock.url}/flaky/{key}", params={"failures": failures}, timeout=10)
    return int(response.json()["calls"]) - 1


def test_get_succeeds_through_two_retries(stack: Stack, client: httpx.Client) -> None:
    key = unique("get")
    before = retries(stack)

    response = client.get(f"/retrying/flaky/{key}", params={"failures": 2})

    assert response.status_code == 200, response.text
    assert response.json()["calls"] == 3, f"the mock answered call {response.json()['calls']}"
    assert calls_so_far(stack.mock, key, 2) == 3
    retried = retries(stack) - before
    assert retried == 2, f"gateway_upstream_retries_total rose by {retried}, not 2"
    by_reason = scrape(stack.gateway).by_label(RETRIES, "reason", route="retrying")
    assert by_reason.get("status_503", 0) >= 2, by_reason


def test_a_post_is_never_retried(stack: Stack, client: httpx.Client) -> None:
    key = unique("post")
    before = retries(stack)

    response = client.post(f"/retrying/flaky/{key}", params={"failures": 2}, content=b"{}")

    # The mock's own 503 passes through unchanged; it was call 1 and there was no other.
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "urn:platform:problem:flaky"
    assert response.json()["calls"] == 1
    assert calls_so_far(stack.mock, key, 2) == 1, "the mock saw more than the one POST"
    assert retries(stack) - before == 0


def test_a_put_with_a_small_body_is_replayed(stack: Stack, client: httpx.Client) -> None:
    # Small bodies are read whole before the first attempt, so sending them again is safe.
    key = unique("put-small")
    response = client.put(f"/retrying/flaky/{key}", params={"failures": 1}, content=b"x" * 100)
    assert response.status_code == 200, response.text
    assert calls_so_far(stack.mock, key, 1) == 2


def test_a_streamed_body_is_never_replayed(stack: Stack, client: httpx.Client) -> None:
    # A chunked body flows to the upstream as it arrives: once sent, it is gone.
    key = unique("put-streamed")

    def body() -> Iterator[bytes]:
        yield b"first chunk,"
        yield b"second chunk"

    response = client.put(f"/retrying/flaky/{key}", params={"failures": 1}, content=body())

    assert response.status_code == 503, response.text
    assert calls_so_far(stack.mock, key, 1) == 1, "the streamed PUT was sent more than once"


def test_retries_stay_within_the_budget_under_total_failure(stack: Stack) -> None:
    """Every request fails: retries add at most the budget, not (attempts - 1) per request.

    Per worker, a retry is allowed while the retries in the window stay at or below
    max(min_per_second * window, ratio * requests in the window). Summed over workers
    whatever the kernel's spread, and counting the route's earlier requests (they may
    still be in the window and only add allowance), that is at most
        workers * min_per_second * window + ratio * (requests + earlier requests).
    The whole test must fit well inside one window for that to hold.
    """
    requests = 150
    gateway_before = scrape(stack.gateway)
    earlier = gateway_before.total("http_server_requests_total", route="retrying")
    retries_before = gateway_before.total(RETRIES, route="retrying")
    exhausted_before = gateway_before.total("gateway_retry_budget_exhausted_total")
    workers = len(stack.gateway.wait_workers())

    with injected_faults(stack.mock, error_rate=1.0, error_status=503):
        mock_before = scrape(stack.mock).total("http_server_requests_total")
        started = time.monotonic()
        statuses: dict[int, int] = {}
        # A new connection per request, so the kernel spreads them over both workers.
        with httpx.Client(base_url=stack.gateway.url, timeout=10) as client:
            for _ in range(requests):
                response = client.get("/retrying/echo/budget", headers={"connection": "close"})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.headers.get("x-mock-fault") == "error", response.headers
        elapsed = time.monotonic() - started
        mock_seen = scrape(stack.mock).total("http_server_requests_total") - mock_before

    after = scrape(stack.gateway)
    retried = after.total(RETRIES, route="retrying") - retries_before
    exhausted = after.total("gateway_retry_budget_exhausted_total") - exhausted_before
    floor = BUDGET_MIN_PER_SECOND * BUDGET_WINDOW_SECONDS
    bound = workers * floor + BUDGET_RATIO * (requests + earlier)
    unbudgeted = requests * (ATTEMPTS - 1)
    print(
        f"\nretry budget under 100 % failure: {requests} requests in {elapsed:.2f} s,"
        f" {retried:.0f} retries (bound {bound:.1f}, without a budget {unbudgeted}),"
        f" {exhausted:.0f} refused by the budget, {mock_seen:.0f} requests reached the mock"
    )

    assert statuses == {503: requests}, statuses
    assert elapsed < 0.9 * BUDGET_WINDOW_SECONDS, f"took {elapsed:.1f} s: longer than a window"
    assert 0 < retried <= bound, (
        f"{retried:.0f} retries for {requests} failing requests; the budget allows at most"
        f" {bound:.1f} ({workers} workers x {floor:g} + {BUDGET_RATIO} x"
        f" ({requests} + {earlier:.0f} earlier requests))"
    )
    # Every attempt, first or retry, reached the mock once: nothing was counted twice.
    assert mock_seen == requests + retried, (
        f"the mock saw {mock_seen:.0f} requests for {requests} requests + {retried:.0f} retries"
    )
    # The budget, not the attempt limit, is what stopped the retries: a request ends
    # either refused by the budget (counted once) or after all its attempts, which takes
    # ATTEMPTS - 1 retries; so at least this many requests met a refusal.
    refused_at_least = requests - retried / (ATTEMPTS - 1)
    assert exhausted >= refused_at_least, (
        f"only {exhausted:.0f} requests were refused a retry by the budget; with"
        f" {retried:.0f} retries for {requests} requests at least {refused_at_least:.1f} were"
    )
