from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from gateway.breaker import (
    BreakerMetrics,
    BreakerPolicy,
    Breakers,
    CircuitBreaker,
    CircuitOpen,
    Permit,
    State,
)
from gateway.errors import (
    BodyTooLarge,
    ClientGone,
    GatewayError,
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

UPSTREAM = "http://mock:8080"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(
    clock: FakeClock | None = None, registry: CollectorRegistry | None = None, **policy: Any
) -> CircuitBreaker:
    metrics = BreakerMetrics(registry) if registry is not None else None
    return CircuitBreaker(
        UPSTREAM, BreakerPolicy(**policy), clock=clock or FakeClock(), metrics=metrics
    )


def outcomes(breaker: CircuitBreaker, *results: bool) -> None:
    for success in results:
        breaker.record(breaker.before_request(), success)


def refused(breaker: CircuitBreaker) -> CircuitOpen:
    with pytest.raises(CircuitOpen) as caught:
        breaker.before_request()
    return caught.value


def retry_after(error: CircuitOpen) -> str:
    return dict(error.headers)[b"retry-after"].decode()


def trip(breaker: CircuitBreaker) -> None:
    outcomes(breaker, *[False] * breaker.policy.consecutive_failures)
    assert breaker.state is State.OPEN


# --- policy ------------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = BreakerPolicy()
    assert policy.consecutive_failures == 5
    assert policy.failure_ratio == 0.5
    assert policy.window_seconds == 10
    assert policy.min_requests == 20
    assert policy.open_seconds == 10
    assert policy.half_open_probes == 1
    assert policy.failure_statuses == {502, 503, 504}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"consecutive_failures": 0}, "greater than or equal to 1"),
        ({"failure_ratio": 0}, "greater than 0"),
        ({"failure_ratio": 1.1}, "less than or equal to 1"),
        ({"min_requests": 0}, "greater than or equal to 1"),
        ({"open_seconds": 0}, "greater than 0"),
        ({"half_open_probes": 0}, "greater than or equal to 1"),
        ({"failure_statuses": [302]}, "greater than or equal to 400"),
        ({"threshold": 3}, "Extra inputs are not permitted"),
    ],
)
def test_policy_rejects(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BreakerPolicy.model_validate(data)


@pytest.mark.parametrize(
    ("outcome", "verdict"),
    [
        (200, True),
        (404, True),
        (500, True),  # not in the default failure_statuses
        (502, False),
        (503, False),
        (504, False),
        (UpstreamUnreachable("refused"), False),
        (UpstreamBroken("reset"), False),
        (UpstreamTimeout("slow"), False),
        (ClientGone("gone"), None),
        (BodyTooLarge("big"), None),
        (GatewayError("other"), None),
    ],
)
def test_verdict(outcome: int | GatewayError, verdict: bool | None) -> None:
    assert BreakerPolicy().verdict(outcome) is verdict


def test_failure_statuses_are_configurable() -> None:
    policy = BreakerPolicy(failure_statuses=frozenset({500, 429}))
    assert policy.verdict(429) is False
    assert policy.verdict(503) is True


# --- closed -> open ------------------------------------------------------------------------


def test_opens_after_consecutive_failures() -> None:
    breaker = make(consecutive_failures=3)
    outcomes(breaker, False, False)
    assert breaker.state is State.CLOSED
    outcomes(breaker, True)  # a success resets the streak
    outcomes(breaker, False, False)
    assert breaker.state is State.CLOSED
    outcomes(breaker, False)
    assert breaker.state is State.OPEN


def test_opens_on_the_failure_ratio_only_above_the_minimum_volume() -> None:
    breaker = make(consecutive_failures=1000, failure_ratio=0.5, min_requests=20)
    outcomes(breaker, *[False, True] * 9, False)  # 10 of 19 failed: too few to judge
    assert breaker.state is State.CLOSED
    outcomes(breaker, True)  # 10 of 20: a success never trips it
    assert breaker.state is State.CLOSED
    outcomes(breaker, False)  # 11 of 21
    assert breaker.state is State.OPEN


def test_a_low_failure_ratio_keeps_it_closed() -> None:
    breaker = make(consecutive_failures=1000, failure_ratio=0.5, min_requests=10)
    outcomes(breaker, *[False, True, True] * 30)
    assert breaker.state is State.CLOSED


def test_old_outcomes_leave_the_ratio_window() -> None:
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1000, min_requests=20, window_seconds=10)
    outcomes(breaker, *[False] * 19)
    clock.now += 10
    outcomes(breaker, False)  # 1 of 1 in the window now: below the minimum volume
    assert breaker.state is State.CLOSED


# --- open ----------------------------------------------------------------------------------


def test_open_refuses_at_once_with_retry_after() -> None:
    clock = FakeClock()
    breaker = make(clock, open_seconds=10)
    trip(breaker)
    error = refused(breaker)
    assert isinstance(error, GatewayError)
    assert not isinstance(error, UpstreamError)
    assert (error.status, error.slug) == (503, "circuit-open")
    assert retry_after(error) == "10"
    assert "mock" not in error.detail  # the client is not told internal host names
    clock.now += 3.5
    assert retry_after(refused(breaker)) == "7"  # 6.5 s rounded up
    clock.now += 6.4
    assert retry_after(refused(breaker)) == "1"
    assert breaker.state is State.OPEN


# --- half-open -----------------------------------------------------------------------------


def test_after_the_cool_down_exactly_the_probes_go_through() -> None:
    clock = FakeClock()
    breaker = make(clock, open_seconds=10, half_open_probes=2)
    trip(breaker)
    clock.now += 10
    assert breaker.state is State.HALF_OPEN
    first, second = breaker.before_request(), breaker.before_request()
    assert first.probe
    assert second.probe
    error = refused(breaker)
    assert retry_after(error) == "1"
    breaker.record(first, success=True)
    assert breaker.state is State.HALF_OPEN  # both must succeed
    refused(breaker)  # the first probe's slot is not handed out again
    breaker.record(second, success=True)
    assert breaker.state is State.CLOSED
    assert not breaker.before_request().probe


def test_a_failed_probe_reopens_for_a_new_cool_down() -> None:
    clock = FakeClock()
    breaker = make(clock, open_seconds=10, half_open_probes=2)
    trip(breaker)
    clock.now += 12
    first, second = breaker.before_request(), breaker.before_request()
    breaker.record(first, success=True)
    breaker.record(second, success=False)
    assert breaker.state is State.OPEN
    assert retry_after(refused(breaker)) == "10"
    clock.now += 10
    assert breaker.state is State.HALF_OPEN


def test_a_released_probe_lets_another_through() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_probes=1)
    trip(breaker)
    clock.now += 10
    probe = breaker.before_request()
    refused(breaker)
    breaker.release(probe)  # the client went away: no verdict on the upstream
    assert breaker.state is State.HALF_OPEN
    outcomes(breaker, True)
    assert breaker.state is State.CLOSED


def test_a_permit_counts_once() -> None:
    breaker = make(consecutive_failures=2)
    permit = breaker.before_request()
    breaker.record(permit, success=False)
    breaker.record(permit, success=False)
    breaker.release(permit)
    assert breaker.state is State.CLOSED


def test_results_from_before_a_transition_are_ignored() -> None:
    clock = FakeClock()
    breaker = make(clock, open_seconds=10, consecutive_failures=2)
    slow = breaker.before_request()  # sent while closed, answers much later
    trip(breaker)
    breaker.record(slow, success=False)
    clock.now += 10
    assert breaker.state is State.HALF_OPEN
    probe = breaker.before_request()
    breaker.record(Permit(0, probe=False), success=True)
    assert breaker.state is State.HALF_OPEN
    breaker.record(probe, success=True)
    assert breaker.state is State.CLOSED


def test_a_reclosed_breaker_starts_from_a_clean_slate() -> None:
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=3)
    outcomes(breaker, False, False, False)
    clock.now += 10
    outcomes(breaker, True)
    assert breaker.state is State.CLOSED
    outcomes(breaker, False, False)
    assert breaker.state is State.CLOSED


# --- logs and metrics ----------------------------------------------------------------------


def test_each_transition_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=2, open_seconds=5)
    with caplog.at_level(logging.INFO, logger="gateway.breaker"):
        outcomes(breaker, False, False)
        for _ in range(5):
            refused(breaker)
        clock.now += 5
        assert breaker.state is State.HALF_OPEN
        assert breaker.state is State.HALF_OPEN
        outcomes(breaker, True)
        for _ in range(5):
            outcomes(breaker, True)
    records = [r for r in caplog.records if r.name == "gateway.breaker"]
    seen = [
        (r.levelname, r.__dict__["from"], r.__dict__["to"], r.__dict__["reason"]) for r in records
    ]
    assert seen == [
        ("WARNING", "closed", "open", "consecutive_failures"),
        ("INFO", "open", "half_open", "cool_down_elapsed"),
        ("INFO", "half_open", "closed", "probes_succeeded"),
    ]
    assert all(r.__dict__["upstream"] == UPSTREAM for r in records)
    assert records[0].getMessage() == f"circuit open for {UPSTREAM}: 2 failures in a row"


def test_ratio_and_probe_failure_reasons(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=100, min_requests=4, failure_ratio=0.5)
    with caplog.at_level(logging.INFO, logger="gateway.breaker"):
        outcomes(breaker, True, False, True, False)
        clock.now += 10
        outcomes(breaker, False)
    reasons = [r.__dict__["reason"] for r in caplog.records if r.name == "gateway.breaker"]
    assert reasons == ["failure_ratio", "cool_down_elapsed", "probe_failed"]
    assert caplog.records[0].getMessage().endswith("2 of 4 requests failed in 10 s")


def test_state_and_transitions_are_exported() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    breaker = make(clock, registry, consecutive_failures=1, open_seconds=1)

    def state() -> float | None:
        return registry.get_sample_value("gateway_circuit_state", {"upstream": UPSTREAM})

    def transitions(to: str) -> float | None:
        return registry.get_sample_value(
            "gateway_circuit_transitions_total", {"upstream": UPSTREAM, "to": to}
        )

    assert state() == 0
    assert [transitions(to) for to in ("open", "half_open", "closed")] == [0, 0, 0]
    outcomes(breaker, False)
    assert state() == 2
    clock.now += 1
    assert breaker.state is State.HALF_OPEN
    assert state() == 1
    outcomes(breaker, False)
    assert state() == 2
    clock.now += 1
    outcomes(breaker, True)
    assert state() == 0
    assert [transitions(to) for to in ("open", "half_open", "closed")] == [2, 2, 1]


def test_breakers_are_shared_per_upstream() -> None:
    registry = CollectorRegistry()
    breakers = Breakers(BreakerMetrics(registry), clock=FakeClock())
    first = breakers.add("http://a:80", BreakerPolicy())
    assert breakers.add("http://a:80", BreakerPolicy()) is first
    second = breakers.add("http://b:80", BreakerPolicy(open_seconds=3))
    assert breakers.get("http://a:80") is first
    assert breakers.get("http://c:80") is None
    assert list(breakers) == [first, second]
    assert len(breakers) == 2
    assert registry.get_sample_value("gateway_circuit_state", {"upstream": "http://b:80"}) == 0
    with pytest.raises(ValueError, match="different circuit_breaker policies"):
        breakers.add("http://a:80", BreakerPolicy(consecutive_failures=2))


# --- properties ----------------------------------------------------------------------------


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(min_value=0, max_value=6)),
        st.tuples(st.just("request"), st.just(0.0)),
        st.tuples(st.sampled_from(["success", "failure", "release"]), st.floats(0, 1)),
    ),
    max_size=200,
)


@given(steps=steps, probes=st.integers(1, 3), threshold=st.integers(1, 4))
def test_breaker_invariants(steps: list[tuple[str, float]], probes: int, threshold: int) -> None:
    """Whatever happens: no request while open, never more probes than configured, and
    the transitions counter, the state gauge and the log agree with the state."""
    registry = CollectorRegistry()
    clock = FakeClock()
    breaker = make(
        clock,
        registry,
        consecutive_failures=threshold,
        min_requests=5,
        open_seconds=5,
        half_open_probes=probes,
    )
    handler = ListHandler()
    records = handler.records
    log = logging.getLogger("gateway.breaker")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        permits: list[Permit] = []
        for op, value in steps:
            if op == "advance":
                clock.now += value
            elif op == "request":
                before = breaker.state
                try:
                    permits.append(breaker.before_request())
                except CircuitOpen:
                    assert before is not State.CLOSED
                else:
                    assert before is not State.OPEN
            elif permits:
                permit = permits.pop(int(value * len(permits)) % len(permits))
                if op == "release":
                    breaker.release(permit)
                else:
                    breaker.record(permit, success=op == "success")
            live_probes = [p for p in permits if p.probe and p.generation == breaker._generation]
            assert len(live_probes) <= probes
            value_of = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}
            assert (
                registry.get_sample_value("gateway_circuit_state", {"upstream": UPSTREAM})
                == value_of[breaker._state]
            )
        total = sum(
            registry.get_sample_value(
                "gateway_circuit_transitions_total", {"upstream": UPSTREAM, "to": s.value}
            )
            or 0
            for s in State
        )
        assert total == len(records)
        for earlier, later in itertools.pairwise(records):
            assert earlier.__dict__["to"] == later.__dict__["from"]
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
