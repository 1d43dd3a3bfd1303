from __future__ import annotations

import random
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from gateway.breaker import CircuitOpen
from gateway.errors import (
    BodyTooLarge,
    ClientGone,
    GatewayError,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.retry import (
    Outcome,
    RetryBudget,
    RetryBudgetPolicy,
    RetryBudgets,
    RetryMetrics,
    RetryPolicy,
    backoff,
    retry_decision,
    retry_reason,
)

ALMOST_ONE = 1.0 - 2**-53  # the largest value random.random() can return


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def top() -> float:
    return ALMOST_ONE


def half() -> float:
    return 0.5


def roomy_budget() -> RetryBudget:
    return RetryBudget(RetryBudgetPolicy(min_per_second=1000), clock=FakeClock())


def decide(
    outcome: Outcome = 503,
    *,
    policy: RetryPolicy | None = None,
    method: str = "GET",
    attempt: int = 1,
    body_replayable: bool = True,
    deadline_remaining: float = 60.0,
    budget: RetryBudget | None = None,
) -> float | None:
    return retry_decision(
        policy or RetryPolicy(attempts=3),
        method,
        attempt,
        outcome,
        body_replayable=body_replayable,
        deadline_remaining=deadline_remaining,
        budget=budget or roomy_budget(),
        random=half,
    )


# --- the policy, as written in the route file ------------------------------------------


def test_defaults_make_one_attempt() -> None:
    policy = RetryPolicy()
    assert policy.attempts == 1
    assert not policy.enabled
    assert policy.methods == {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
    assert policy.on_status == {502, 503, 504}
    assert (policy.backoff_base, policy.backoff_max) == (0.025, 1.0)
    assert policy.budget == RetryBudgetPolicy(ratio=0.2, min_per_second=3, window_seconds=10)


def test_policy_from_yaml() -> None:
    data = yaml.safe_load(
        """
        attempts: 4
        methods: [get, Post, PURGE]
        on_status: [429, 503]
        backoff_base: 0.1
        backoff_max: 2
        budget: {ratio: 0.1, min_per_second: 1, window_seconds: 30}
        """
    )
    policy = RetryPolicy.model_validate(data)
    assert policy.enabled
    assert policy.methods == {"GET", "POST", "PURGE"}
    assert policy.on_status == {429, 503}
    assert policy.budget.window_seconds == 30
    with pytest.raises(ValidationError):
        policy.attempts = 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"attempts": 0}, "greater than or equal to 1"),
        ({"attempts": 11}, "less than or equal to 10"),
        ({"methods": ["GET", "BAD METHOD"]}, "is not an HTTP method"),
        ({"methods": ["GET\r\nX: y"]}, "is not an HTTP method"),
        ({"methods": []}, "at least 1"),
        ({"on_status": [200]}, "greater than or equal to 400"),
        ({"on_status": [600]}, "less than or equal to 599"),
        ({"backoff_base": 0}, "greater than 0"),
        ({"backoff_base": 0.5, "backoff_max": 0.1}, "backoff_max must not be less"),
        ({"budget": {"ratio": 1.5}}, "less than or equal to 1"),
        ({"budget": {"window_seconds": 0.5}}, "greater than or equal to 1"),
        ({"budget": {"tokens": 3}}, "Extra inputs are not permitted"),
        ({"retries": 3}, "Extra inputs are not permitted"),
    ],
)
def test_policy_rejects(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RetryPolicy.model_validate(data)


# --- backoff -----------------------------------------------------------------------------


def test_backoff_cap_doubles_from_base_up_to_max() -> None:
    policy = RetryPolicy(attempts=10, backoff_base=0.025, backoff_max=1.0)
    caps = [backoff(policy, attempt, top) for attempt in range(1, 10)]
    expected = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert caps == pytest.approx(expected)
    assert all(cap < bound for cap, bound in zip(caps, expected, strict=True))


def test_backoff_full_jitter_can_be_zero() -> None:
    policy = RetryPolicy(attempts=3)
    assert backoff(policy, 1, lambda: 0.0) == 0.0
    assert backoff(policy, 2, half) == pytest.approx(0.025)


def test_backoff_survives_absurd_attempt_numbers() -> None:
    assert backoff(RetryPolicy(), 10_000, top) == pytest.approx(1.0)


def test_backoff_jitter_spreads_over_the_whole_range() -> None:
    policy = RetryPolicy(attempts=3, backoff_base=0.1, backoff_max=1.0)
    rng = random.Random(4)  # a fixed seed: the test is deterministic
    delays = [backoff(policy, 3, rng.random) for _ in range(2000)]
    assert all(0 <= d < 0.4 for d in delays)
    assert min(delays) < 0.02
    assert max(delays) > 0.38
    assert sum(delays) / len(delays) == pytest.approx(0.2, abs=0.02)


@given(
    attempt=st.integers(min_value=1, max_value=200),
    unit=st.floats(min_value=0, max_value=ALMOST_ONE),
    base=st.floats(min_value=0.001, max_value=5),
    extra=st.floats(min_value=0, max_value=50),
)
def test_backoff_stays_within_bounds(attempt: int, unit: float, base: float, extra: float) -> None:
    policy = RetryPolicy(attempts=2, backoff_base=base, backoff_max=base + extra)
    delay = backoff(policy, attempt, lambda: unit)
    assert 0 <= delay <= min(policy.backoff_max, base * 2 ** min(attempt - 1, 62))


# --- the decision ------------------------------------------------------------------------


def test_retries_a_configured_status_until_the_attempts_run_out() -> None:
    policy = RetryPolicy(attempts=3)
    assert decide(503, policy=policy, attempt=1) == pytest.approx(0.0125)
    assert decide(503, policy=policy, attempt=2) == pytest.approx(0.025)
    assert decide(503, policy=policy, attempt=3) is None


def test_the_default_policy_never_retries() -> None:
    assert decide(503, policy=RetryPolicy()) is None
    assert decide(UpstreamUnreachable("refused"), policy=RetryPolicy()) is None


@pytest.mark.parametrize("status", [502, 503, 504])
def test_default_statuses_are_retried(status: int) -> None:
    assert decide(status) is not None


@pytest.mark.parametrize("status", [200, 201, 304, 400, 404, 429, 500, 501])
def test_other_statuses_pass_through(status: int) -> None:
    assert decide(status) is None


def test_configured_statuses_replace_the_defaults() -> None:
    policy = RetryPolicy(attempts=2, on_status=frozenset({429}))
    assert decide(429, policy=policy) is not None
    assert decide(503, policy=policy) is None
    # Connect errors and resets do not depend on on_status.
    assert decide(UpstreamUnreachable("refused"), policy=policy) is not None


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_idempotent_methods_are_retried(method: str) -> None:
    assert decide(method=method) is not None


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT", "get"])
def test_other_methods_are_not(method: str) -> None:
    # Methods are case-sensitive (RFC 9110): "get" is not GET, so it is not retried.
    assert decide(method=method) is None


def test_post_is_retried_only_when_configured() -> None:
    policy = RetryPolicy(attempts=2, methods=frozenset({"GET", "post"}))
    assert decide(method="POST", policy=policy) is not None


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (UpstreamUnreachable("connection refused"), True),
        (UpstreamBroken("connection reset"), True),
        (UpstreamTimeout("no answer"), False),
        (ClientGone("client went away"), False),
        (BodyTooLarge("too large"), False),
        (CircuitOpen("open"), False),
        (GatewayError("something else"), False),
    ],
)
def test_only_connect_errors_and_resets_are_retried(error: GatewayError, retried: bool) -> None:
    assert (decide(error) is not None) is retried


@pytest.mark.parametrize("outcome", [503, UpstreamUnreachable("refused"), UpstreamBroken("reset")])
def test_a_streamed_body_is_never_replayed(outcome: Outcome) -> None:
    assert decide(outcome, body_replayable=False) is None
    assert decide(outcome, body_replayable=True) is not None


def test_the_backoff_must_end_before_the_deadline() -> None:
    # With `half`, the first retry waits 0.0125 s.
    assert decide(deadline_remaining=0.0126) == pytest.approx(0.0125)
    assert decide(deadline_remaining=0.0125) is None
    assert decide(deadline_remaining=0.0) is None
    assert decide(deadline_remaining=-1.0) is None


def test_a_yes_spends_the_budget_and_a_no_does_not() -> None:
    budget = RetryBudget(RetryBudgetPolicy(min_per_second=0.1), clock=FakeClock())  # 1 retry
    assert decide(method="POST", budget=budget) is None
    assert decide(deadline_remaining=0.001, budget=budget) is None
    assert budget.counts() == (0, 0)
    assert decide(budget=budget) is not None
    assert budget.counts() == (0, 1)


def test_an_empty_budget_refuses_and_says_so() -> None:
    refusals: list[None] = []
    budget = RetryBudget(
        RetryBudgetPolicy(min_per_second=0.1),  # 0.1/s over 10 s: one retry
        clock=FakeClock(),
        on_exhausted=lambda: refusals.append(None),
    )
    assert decide(budget=budget) is not None
    assert decide(budget=budget) is None
    assert len(refusals) == 1
    # A request the rules refuse anyway is not a budget refusal.
    assert decide(200, budget=budget) is None
    assert len(refusals) == 1


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (503, "status_503"),
        (500, None),
        (UpstreamUnreachable("refused"), "connect_error"),
        (UpstreamBroken("reset"), "broken"),
        (UpstreamTimeout("slow"), None),
    ],
)
def test_retry_reason(outcome: Outcome, reason: str | None) -> None:
    assert retry_reason(outcome, RetryPolicy()) == reason


# --- the budget --------------------------------------------------------------------------


def spend_all(budget: RetryBudget, limit: int = 10_000) -> int:
    spent = 0
    while spent < limit and budget.try_spend():
        spent += 1
    return spent


def test_budget_floor_allows_a_few_retries_without_traffic() -> None:
    budget = RetryBudget(RetryBudgetPolicy(min_per_second=3, window_seconds=10), clock=FakeClock())
    assert budget.allowance() == 30
    assert spend_all(budget) == 30
    assert not budget.can_retry()


def test_budget_ratio_of_requests_above_the_floor() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, min_per_second=0), clock=FakeClock())
    assert not budget.can_retry()
    for _ in range(12):
        budget.record_request()
    assert spend_all(budget) == 2  # 0.2 * 12 = 2.4: a third retry would exceed it
    for _ in range(3):
        budget.record_request()
    assert spend_all(budget) == 1  # 0.2 * 15 = 3


def test_can_retry_only_asks() -> None:
    budget = RetryBudget(RetryBudgetPolicy(min_per_second=0.1), clock=FakeClock())
    assert budget.can_retry()
    assert budget.can_retry()
    budget.record_retry()
    assert not budget.can_retry()


def test_budget_window_slides() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(
        RetryBudgetPolicy(ratio=0.5, min_per_second=0, window_seconds=10), clock=clock
    )
    for _ in range(10):
        budget.record_request()
    assert spend_all(budget) == 5
    clock.now = 1005.0
    for _ in range(4):
        budget.record_request()
    assert spend_all(budget) == 2  # 14 requests allow 7
    clock.now = 1010.0  # the first 10 requests and their 5 retries leave the window
    assert budget.counts() == (4, 2)
    assert not budget.can_retry()  # 4 requests allow 2, both spent
    clock.now = 1015.0
    assert budget.counts() == (0, 0)


def test_under_total_failure_retries_stay_within_the_budget() -> None:
    """500 requests inside one window, every attempt fails: at most 20 % more load."""
    clock = FakeClock()
    registry = CollectorRegistry()
    metrics = RetryMetrics(registry)
    budgets = RetryBudgets(metrics, clock=clock)
    policy = RetryPolicy(attempts=3)
    budget = budgets.add("http://up", policy.budget)
    attempts = refused = 0
    for _ in range(500):
        budget.record_request()
        attempt = 1
        while True:
            attempts += 1
            clock.now += 0.001
            if (
                retry_decision(
                    policy,
                    "GET",
                    attempt,
                    503,
                    body_replayable=True,
                    deadline_remaining=60,
                    budget=budget,
                    random=half,
                )
                is None
            ):
                refused += attempt < policy.attempts  # the budget said no, not the rules
                break
            metrics.retried("r", "status_503")
            attempt += 1
    retries = attempts - 500
    assert retries == max(3 * 10, 0.2 * 500) == 100
    assert (
        registry.get_sample_value(
            "gateway_upstream_retries_total", {"route": "r", "reason": "status_503"}
        )
        == 100
    )
    # Without the budget there would have been 1000 retries: 2 per request.
    assert refused > 400
    assert (
        registry.get_sample_value("gateway_retry_budget_exhausted_total", {"upstream": "http://up"})
        == refused
    )


Op = tuple[str, float]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(min_value=0, max_value=4)),
        st.tuples(st.just("request"), st.just(0.0)),
        st.tuples(st.just("retry"), st.just(0.0)),
    ),
    max_size=300,
)


@given(
    steps=ops,
    ratio=st.floats(min_value=0, max_value=1),
    floor=st.floats(min_value=0, max_value=2),
    window=st.sampled_from([1.0, 5.0, 10.0]),
)
def test_budget_never_exceeded(steps: list[Op], ratio: float, floor: float, window: float) -> None:
    """Every retry allowed, counted with the others in its window, fits the allowance."""
    clock = FakeClock(50.0)
    budget = RetryBudget(
        RetryBudgetPolicy(ratio=ratio, min_per_second=floor, window_seconds=window), clock=clock
    )
    for op, value in steps:
        if op == "advance":
            clock.now += value
        elif op == "request":
            budget.record_request()
        elif budget.try_spend():
            requests, retries = budget.counts()
            assert retries <= max(floor * window, ratio * requests) + 1e-9
        else:
            requests, retries = budget.counts()
            assert retries + 1 > max(floor * window, ratio * requests) - 1e-9


@given(requests=st.lists(st.booleans(), max_size=400), ratio=st.floats(0, 1))
def test_retries_within_one_window_never_exceed_the_formula(
    requests: list[bool], ratio: float
) -> None:
    """The issue's bound, for any interleaving: retries <= max(min * window, ratio * N)."""
    budget = RetryBudget(
        RetryBudgetPolicy(ratio=ratio, min_per_second=0.5, window_seconds=10), clock=FakeClock()
    )
    n = spent = 0
    for is_request in requests:
        if is_request:
            budget.record_request()
            n += 1
        else:
            spent += budget.try_spend()
    assert spent <= max(0.5 * 10, ratio * n) + 1e-9


# --- metrics and the registry of budgets -------------------------------------------------


def test_retry_metrics() -> None:
    registry = CollectorRegistry()
    metrics = RetryMetrics(registry)
    metrics.retried("mock", "connect_error")
    metrics.retried("mock", "connect_error")
    metrics.budget_exhausted("http://up")
    sample = registry.get_sample_value
    assert (
        sample("gateway_upstream_retries_total", {"route": "mock", "reason": "connect_error"}) == 2
    )
    assert sample("gateway_retry_budget_exhausted_total", {"upstream": "http://up"}) == 1


def test_budgets_are_shared_per_upstream() -> None:
    registry = CollectorRegistry()
    budgets = RetryBudgets(RetryMetrics(registry), clock=FakeClock())
    first = budgets.add("http://a:80", RetryBudgetPolicy())
    assert budgets.add("http://a:80", RetryBudgetPolicy()) is first
    assert budgets.get("http://a:80") is first
    assert budgets.get("http://b:80") is None
    # The series exists from the start, so rate() sees the first refusal.
    assert (
        registry.get_sample_value(
            "gateway_retry_budget_exhausted_total", {"upstream": "http://a:80"}
        )
        == 0
    )
    with pytest.raises(ValueError, match="different retry budgets"):
        budgets.add("http://a:80", RetryBudgetPolicy(ratio=0.5))
