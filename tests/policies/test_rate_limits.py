"""Token-bucket rate limits: /limited in each worker's memory, /shared-limit and
/shared-lenient in Redis, shared by both workers.

Buckets refill at 1 token per 10 s, so nothing refills while a test runs and the counts
are exact. The gateway trusts one proxy hop, so each test takes a bucket of its own by
sending `X-Forwarded-For: <a documentation address>` (a label, never contacted).

The Redis outage test runs last in this module; it starts Redis again on its way out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from tests.harness.pinning import Reply, pin_workers
from tests.harness.processes import wait_for
from tests.harness.scrape import scrape

from .support import Stack

# From tests/policies/routes.yaml.
MEMORY_BURST = 5
REDIS_BURST = 6
REFILL_SECONDS = 10  # 1 / requests_per_second


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway.url, timeout=10) as client:
        yield client


def client_address(address: str) -> dict[str, str]:
    return {"x-forwarded-for": address}


def assert_rate_limited(reply: Reply, burst: int) -> None:
    assert reply.status == 429, reply.describe()
    assert reply.headers["content-type"] == "application/problem+json", reply.headers
    assert reply.json()["type"] == "urn:platform:problem:rate-limited", reply.describe()
    assert 1 <= int(reply.headers["retry-after"]) <= REFILL_SECONDS, reply.headers
    assert reply.headers["ratelimit-limit"] == str(burst), reply.headers
    assert reply.headers["ratelimit-remaining"] == "0", reply.headers
    assert 0 < int(reply.headers["ratelimit-reset"]) <= burst * REFILL_SECONDS, reply.headers


def as_reply(response: httpx.Response) -> Reply:
    return Reply(response.status_code, dict(response.headers), response.content)


def decisions(stack: Stack, route: str) -> dict[str, float]:
    return scrape(stack.gateway).by_label(
        "gateway_ratelimit_decisions_total", "decision", route=route
    )


def test_memory_limit_is_exactly_burst_on_one_connection(stack: Stack) -> None:
    """In memory, each gunicorn worker keeps its own buckets (documented: a limit per
    worker). A keep-alive connection stays with the worker that accepted it, so on ONE
    connection the count is exact: `burst` 200s, then 429s. The other worker, asked
    next, has a full bucket of its own for the same client.
    """
    who = client_address("198.51.100.10")
    extra = 3
    with pin_workers(stack.gateway) as (first, second):
        replies = [first.request("GET", "/limited/echo", who) for _ in range(MEMORY_BURST + extra)]
        statuses = [r.status for r in replies]
        assert statuses == [200] * MEMORY_BURST + [429] * extra, statuses
        for reply in replies[MEMORY_BURST:]:
            assert_rate_limited(reply, MEMORY_BURST)

        other = [second.request("GET", "/limited/echo", who) for _ in range(MEMORY_BURST + 1)]
        statuses = [r.status for r in other]
        assert statuses == [200] * MEMORY_BURST + [429], f"the other worker: {statuses}"


def test_redis_limit_is_exactly_burst_across_both_workers(stack: Stack) -> None:
    who = client_address("198.51.100.20")
    before = decisions(stack, "shared-limit")
    total = 2 * REDIS_BURST + 4
    with pin_workers(stack.gateway) as workers:
        # Alternating between the workers: one bucket for both.
        replies = [
            (conn.worker_pid, conn.request("GET", "/shared-limit/echo", who))
            for i in range(total)
            for conn in [workers[i % len(workers)]]
        ]
        statuses = [reply.status for _, reply in replies]
        assert statuses == [200] * REDIS_BURST + [429] * (total - REDIS_BURST), statuses
        for pid in {conn.worker_pid for conn in workers}:
            served = sorted({r.status for p, r in replies if p == pid})
            assert served == [200, 429], f"worker {pid} answered only {served}"
        for _, reply in replies[REDIS_BURST:]:
            assert_rate_limited(reply, REDIS_BURST)

        # Addresses the client wrote in front of the trusted hop change nothing.
        spoofed = client_address("203.0.113.9, 198.51.100.20")
        assert_rate_limited(workers[0].request("GET", "/shared-limit/echo", spoofed), REDIS_BURST)

    after = decisions(stack, "shared-limit")
    allowed = after.get("allowed", 0) - before.get("allowed", 0)
    limited = after.get("limited", 0) - before.get("limited", 0)
    assert (allowed, limited) == (REDIS_BURST, total - REDIS_BURST + 1), (allowed, limited)


def test_redis_limit_is_exact_under_concurrent_clients(stack: Stack) -> None:
    # Many connections at once, spread over both workers by the kernel: the Lua script
    # takes each token atomically, so no two requests get the same one.
    who = client_address("198.51.100.21")
    threads, per_thread = 8, 6
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def hammer() -> None:
        with httpx.Client(base_url=stack.gateway.url, timeout=10) as client:
            start.wait(timeout=10)
            for _ in range(per_thread):
                response = client.get("/shared-limit/echo", headers=who)
                with lock:
                    statuses.append(response.status_code)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=30)
    assert len(statuses) == threads * per_thread, f"only {len(statuses)} requests finished"
    counts = {status: statuses.count(status) for status in set(statuses)}
    assert counts == {200: REDIS_BURST, 429: threads * per_thread - REDIS_BURST}, counts


def test_redis_down_follows_on_backend_error_and_recovers(
    stack: Stack, client: httpx.Client
) -> None:
    """shared-limit fails closed (503), shared-lenient fails open (let through); both count
    every check Redis could not answer in gateway_ratelimit_backend_errors_total."""
    requests = 5
    errors_before = scrape(stack.gateway).by_label(
        "gateway_ratelimit_backend_errors_total", "route"
    )
    stack.redis.stop()
    try:
        mock_before = scrape(stack.mock).total("http_server_requests_total")
        for _ in range(requests):
            denied = client.get("/shared-limit/echo", headers=client_address("198.51.100.30"))
            assert denied.status_code == 503, denied.text
            assert denied.json()["type"] == "urn:platform:problem:rate-limit-unavailable"
            assert denied.headers["retry-after"] == "1"
        assert scrape(stack.mock).total("http_server_requests_total") == mock_before

        for _ in range(requests):
            allowed = client.get("/shared-lenient/echo", headers=client_address("198.51.100.30"))
            assert allowed.status_code == 200, allowed.text
            assert allowed.json()["path"] == "/echo"

        errors = scrape(stack.gateway).by_label("gateway_ratelimit_backend_errors_total", "route")
        rise = {
            route: errors.get(route, 0) - errors_before.get(route, 0)
            for route in ("shared-limit", "shared-lenient")
        }
        assert rise == {"shared-limit": requests, "shared-lenient": requests}, rise
        policies = scrape(stack.gateway).by_label(
            "gateway_ratelimit_backend_errors_total", "policy", route="shared-limit"
        )
        assert set(policies) == {"deny"}, policies
    finally:
        stack.redis.start()

    # Back: after the backend's short cool-down the limit is enforced from Redis again.
    def limiter_answers() -> bool:
        response = client.get("/shared-limit/echo", headers=client_address("198.51.100.31"))
        assert response.status_code in (200, 503), response.text
        return response.status_code == 200

    wait_for("the Redis rate limit to work again", limiter_answers, timeout=10, interval=0.2)
