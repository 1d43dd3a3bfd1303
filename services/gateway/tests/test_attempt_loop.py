"""The attempt loop the proxy is meant to run, with retries and the breaker together.

`attempt_loop` is the reference for wiring `gateway.retry` and `gateway.breaker` into
`proxy.Proxy.forward`: per client request one `record_request`, per attempt one permit
handed back exactly once, and a retry only where `retry_decision` says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from gateway.breaker import BreakerMetrics, BreakerPolicy, Breakers, CircuitBreaker, CircuitOpen
from gateway.errors import GatewayError, UpstreamUnreachable
from gateway.retry import (
    Outcome,
    RetryBudget,
    RetryBudgets,
    RetryMetrics,
    RetryPolicy,
    retry_decision,
    retry_reason,
)

ORIGIN = "http://mock:8080"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def attempt_loop(
    send: Callable[[], Awaitable[int]],
    *,
    route: str,
    method: str,
    total_timeout: float,
    body_replayable: bool,
    policy: RetryPolicy,
    budget: RetryBudget | None,
    breaker: CircuitBreaker | None,
    metrics: RetryMetrics,
    clock: FakeClock,
) -> int:
    """The status relayed to the client; raises the GatewayError to answer with instead."""
    started = clock()
    if budget is not None:
        budget.record_request()  # once per client request, whatever the route's policy
    attempt = 0
    while True:
        attempt += 1
        permit = breaker.before_request() if breaker is not None else None  # CircuitOpen
        outcome: Outcome
        try:
            outcome = await send()  # the response headers have arrived
        except GatewayError as exc:
            outcome = exc
        if breaker is not None and permit is not None:
            verdict = breaker.policy.verdict(outcome)
            if verdict is None:
                breaker.release(permit)
            else:
                breaker.record(permit, verdict)
        delay = None
        if budget is not None and policy.enabled:
            delay = retry_decision(
                policy,
                method,
                attempt,
                outcome,
                body_replayable=body_replayable,
                deadline_remaining=total_timeout - (clock() - started),
                budget=budget,
            )
        if delay is None:
            if isinstance(outcome, GatewayError):
                raise outcome
            return outcome  # relayed to the client as today, status and all
        reason = retry_reason(outcome, policy)
        assert reason is not None
        metrics.retried(route, reason)
        await clock.sleep(delay)


class Flaky:
    """An upstream whose first `failures` calls answer 503 (or are refused)."""

    def __init__(self, failures: int, *, refuse: bool = False) -> None:
        self.failures = failures
        self.refuse = refuse
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            if self.refuse:
                raise UpstreamUnreachable("connection refused")
            return 503
        return 200


@dataclass
class Rig:
    """What the gateway builds once per worker at start-up."""

    clock: FakeClock = field(default_factory=FakeClock)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.retry_metrics = RetryMetrics(self.registry)
        self.budgets = RetryBudgets(self.retry_metrics, clock=self.clock)
        self.breakers = Breakers(BreakerMetrics(self.registry), clock=self.clock)

    async def request(
        self,
        upstream: Flaky,
        *,
        method: str = "GET",
        body_replayable: bool = True,
        policy: RetryPolicy | None = None,
        breaker_policy: BreakerPolicy | None = None,
    ) -> int:
        policy = policy or RetryPolicy(attempts=3)
        return await attempt_loop(
            upstream,
            route="mock",
            method=method,
            total_timeout=10,
            body_replayable=body_replayable,
            policy=policy,
            budget=self.budgets.add(ORIGIN, policy.budget),
            breaker=self.breakers.add(ORIGIN, breaker_policy or BreakerPolicy()),
            metrics=self.retry_metrics,
            clock=self.clock,
        )

    def retries(self, reason: str) -> float | None:
        return self.registry.get_sample_value(
            "gateway_upstream_retries_total", {"route": "mock", "reason": reason}
        )


async def test_a_flaky_get_succeeds_through_retries() -> None:
    rig = Rig()
    upstream = Flaky(2)
    assert await rig.request(upstream) == 200
    assert upstream.calls == 3
    assert rig.retries("status_503") == 2


async def test_a_refused_connection_is_retried() -> None:
    rig = Rig()
    upstream = Flaky(1, refuse=True)
    assert await rig.request(upstream) == 200
    assert rig.retries("connect_error") == 1


async def test_post_is_never_retried() -> None:
    rig = Rig()
    upstream = Flaky(2)
    assert await rig.request(upstream, method="POST") == 503
    assert upstream.calls == 1


async def test_a_streamed_body_is_sent_once() -> None:
    rig = Rig()
    upstream = Flaky(2)
    assert await rig.request(upstream, method="PUT", body_replayable=False) == 503
    assert upstream.calls == 1


async def test_the_last_failure_passes_through_when_attempts_run_out() -> None:
    rig = Rig()
    upstream = Flaky(5, refuse=True)
    with pytest.raises(UpstreamUnreachable):
        await rig.request(upstream)
    assert upstream.calls == 3


async def test_the_breaker_spares_a_dead_upstream_and_probes_it_later() -> None:
    rig = Rig()
    breaker_policy = BreakerPolicy(consecutive_failures=3, open_seconds=10)
    upstream = Flaky(1000)
    # 3 attempts of the first request open the breaker.
    assert await rig.request(upstream, breaker_policy=breaker_policy) == 503
    assert upstream.calls == 3
    for _ in range(20):
        with pytest.raises(CircuitOpen):
            await rig.request(upstream, breaker_policy=breaker_policy)
    assert upstream.calls == 3  # the upstream saw none of them
    rig.clock.now += 10
    upstream.failures = 0  # it recovered
    assert await rig.request(upstream, breaker_policy=breaker_policy) == 200
    assert upstream.calls == 4
    assert rig.registry.get_sample_value("gateway_circuit_state", {"upstream": ORIGIN}) == 0
