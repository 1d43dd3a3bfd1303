"""The rate-limit policy, keys, headers, errors, metrics and the limiter facade."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from starlette.types import Message

from gateway.errors import GatewayError
from gateway.ratelimit import (
    Decision,
    RateLimited,
    RateLimiter,
    RateLimiterUnavailable,
    RateLimitMetrics,
    RateLimitPolicy,
    build_rate_limiter,
    rate_limit_key,
    ratelimit_headers,
)
from gateway.ratelimit_bucket import BackendUnavailable
from gateway.ratelimit_memory import MemoryBackend
from servicekit.problem import PROBLEM_CONTENT_TYPE, send_problem


class FrozenClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def limiter_for(
    registry: CollectorRegistry, clock: FrozenClock | None = None, **policy: Any
) -> RateLimiter:
    return build_rate_limiter(
        RateLimitPolicy.model_validate({"requests_per_second": 1, "burst": 3, **policy}),
        "api",
        redis_client=None,
        metrics=RateLimitMetrics(registry),
        clock=clock or FrozenClock(),
    )


# --- the policy -------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = RateLimitPolicy.model_validate({"requests_per_second": 5, "burst": 10})
    assert policy.key == "client_ip"
    assert policy.backend == "memory"
    assert policy.on_backend_error == "allow"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"requests_per_second": 0}, "requests_per_second"),
        ({"requests_per_second": -1}, "requests_per_second"),
        ({"requests_per_second": float("inf")}, "requests_per_second"),
        ({"requests_per_second": float("nan")}, "requests_per_second"),
        ({"burst": 0}, "burst"),
        ({"burst": 1.5}, "burst"),
        ({"key": "header"}, "key"),
        ({"backend": "memcached"}, "backend"),
        ({"on_backend_error": "retry"}, "on_backend_error"),
        ({"limit": 3}, "limit"),  # extra fields are refused: a typo never goes unnoticed
    ],
)
def test_policy_refuses(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RateLimitPolicy.model_validate({"requests_per_second": 5, "burst": 10, **change})
    assert info.value.errors()[0]["loc"] == (field,)


def test_policy_refuses_a_refill_longer_than_30_days() -> None:
    with pytest.raises(ValidationError, match="30 days"):
        RateLimitPolicy(requests_per_second=0.000001, burst=10)
    RateLimitPolicy(requests_per_second=100 / 86400, burst=100)  # 100 a day is fine


def test_policy_is_frozen() -> None:
    policy = RateLimitPolicy(requests_per_second=1, burst=1)
    with pytest.raises(ValidationError):
        policy.burst = 2


# --- the client key ---------------------------------------------------------------------


def test_key_by_client_ip_ignores_the_subject() -> None:
    assert rate_limit_key("client_ip", client_ip="203.0.113.7", subject="alice") == (
        "ip:203.0.113.7"
    )


@pytest.mark.parametrize("kind", ["subject", "api_key"])
def test_key_by_subject_falls_back_to_the_address(kind: Any) -> None:
    assert rate_limit_key(kind, client_ip="203.0.113.7", subject="alice") == "sub:alice"
    assert rate_limit_key(kind, client_ip="203.0.113.7", subject=None) == "ip:203.0.113.7"
    assert rate_limit_key(kind, client_ip="203.0.113.7", subject="") == "ip:203.0.113.7"


def test_a_subject_that_looks_like_an_address_gets_its_own_bucket() -> None:
    by_subject = rate_limit_key("subject", client_ip="10.0.0.1", subject="203.0.113.7")
    by_address = rate_limit_key("subject", client_ip="203.0.113.7", subject=None)
    assert by_subject != by_address


def test_ipv6_addresses_share_their_64() -> None:
    one = rate_limit_key("client_ip", client_ip="2001:db8:1:2:aaaa::1", subject=None)
    two = rate_limit_key("client_ip", client_ip="2001:db8:1:2:bbbb::2", subject=None)
    other = rate_limit_key("client_ip", client_ip="2001:db8:1:3::1", subject=None)
    assert one == two == "ip:2001:db8:1:2::/64"
    assert other != one


def test_a_key_that_is_not_an_address_is_used_as_is() -> None:
    assert rate_limit_key("client_ip", client_ip="unknown", subject=None) == "ip:unknown"
    assert rate_limit_key("client_ip", client_ip="x:y", subject=None) == "ip:x:y"


# --- headers and errors -----------------------------------------------------------------


def test_ratelimit_headers_of_an_allowed_request() -> None:
    decision = Decision(True, limit=10, remaining=7, reset_seconds=2.2, retry_after_seconds=0)
    assert ratelimit_headers(decision) == [
        (b"ratelimit-limit", b"10"),
        (b"ratelimit-remaining", b"7"),
        (b"ratelimit-reset", b"3"),
    ]


def test_ratelimit_reset_of_a_full_bucket_is_zero_and_float_noise_does_not_round_up() -> None:
    full = Decision(True, limit=1, remaining=1, reset_seconds=0.0, retry_after_seconds=0)
    assert (b"ratelimit-reset", b"0") in ratelimit_headers(full)
    noisy = Decision(True, limit=1, remaining=0, reset_seconds=2.0000000001, retry_after_seconds=0)
    assert (b"ratelimit-reset", b"2") in ratelimit_headers(noisy)


def test_a_degraded_decision_has_no_ratelimit_headers() -> None:
    assert ratelimit_headers(Decision.without_backend(True, capacity=5)) == []


@pytest.mark.parametrize(
    ("retry_after", "header"), [(0.001, b"1"), (0.5, b"1"), (1.0, b"1"), (1.2, b"2"), (59.9, b"60")]
)
def test_rate_limited_headers(retry_after: float, header: bytes) -> None:
    decision = Decision(
        False, limit=5, remaining=0, reset_seconds=4.5, retry_after_seconds=retry_after
    )
    error = RateLimited(decision, route="api")
    assert isinstance(error, GatewayError)
    assert (error.status, error.slug) == (429, "rate-limited")
    assert error.headers == [
        (b"retry-after", header),
        (b"ratelimit-limit", b"5"),
        (b"ratelimit-remaining", b"0"),
        (b"ratelimit-reset", b"5"),
    ]
    assert error.decision is decision
    assert "'api'" in error.detail
    assert f"retry after {header.decode()} s" in error.detail


async def test_rate_limited_becomes_problem_json_with_its_headers() -> None:
    decision = Decision(False, limit=5, remaining=0, reset_seconds=3, retry_after_seconds=0.7)
    error = RateLimited(decision, route="api")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await send_problem(send, error.status, error.detail, slug=error.slug, headers=error.headers)
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 429
    assert headers[b"content-type"] == PROBLEM_CONTENT_TYPE.encode()
    assert headers[b"retry-after"] == b"1"
    assert headers[b"ratelimit-remaining"] == b"0"
    body = json.loads(sent[1]["body"])
    assert body["type"] == "urn:platform:problem:rate-limited"
    assert body["status"] == 429


def test_rate_limiter_unavailable_is_a_503_with_retry_after() -> None:
    error = RateLimiterUnavailable(route="api")
    assert (error.status, error.slug) == (503, "rate-limit-unavailable")
    assert error.headers == [(b"retry-after", b"1")]


# --- the facade, with the memory backend ------------------------------------------------


async def test_check_allows_burst_then_raises_with_counts_in_metrics() -> None:
    registry = CollectorRegistry()
    limiter = limiter_for(registry)
    decisions = [await limiter.check("ip:1.2.3.4") for _ in range(3)]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    with pytest.raises(RateLimited) as info:
        await limiter.check("ip:1.2.3.4")
    assert info.value.decision.retry_after_seconds == pytest.approx(1.0)
    assert (b"retry-after", b"1") in info.value.headers
    assert (
        sample(registry, "gateway_ratelimit_decisions_total", route="api", decision="allowed") == 3
    )
    assert (
        sample(registry, "gateway_ratelimit_decisions_total", route="api", decision="limited") == 1
    )


async def test_check_refills_on_the_injected_clock() -> None:
    clock = FrozenClock()
    limiter = limiter_for(CollectorRegistry(), clock, requests_per_second=2, burst=1)
    await limiter.check("k")
    with pytest.raises(RateLimited):
        await limiter.check("k")
    clock.now += 0.5
    assert (await limiter.check("k")).allowed


def test_key_for_follows_the_policy() -> None:
    by_subject = limiter_for(CollectorRegistry(), key="subject")
    assert by_subject.key_for(client_ip="1.2.3.4", subject="alice") == "sub:alice"
    assert by_subject.key_for(client_ip="1.2.3.4") == "ip:1.2.3.4"
    by_ip = limiter_for(CollectorRegistry())
    assert by_ip.key_for(client_ip="1.2.3.4", subject="alice") == "ip:1.2.3.4"


def test_the_memory_backend_is_built_for_memory_policies() -> None:
    limiter = limiter_for(CollectorRegistry(), requests_per_second=4, burst=9)
    assert isinstance(limiter.backend, MemoryBackend)
    assert (limiter.backend.rate, limiter.backend.capacity) == (4, 9)


def test_a_redis_policy_without_a_client_is_refused_naming_the_route() -> None:
    with pytest.raises(ValueError, match=r"route 'api' uses rate_limit\.backend redis"):
        limiter_for(CollectorRegistry(), backend="redis")


class BrokenBackend:
    async def take(self, key: str) -> Decision:
        raise BackendUnavailable("down")


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_a_failing_backend_follows_the_policy_and_is_counted(policy: str) -> None:
    registry = CollectorRegistry()
    rate_policy = RateLimitPolicy.model_validate(
        {"requests_per_second": 1, "burst": 3, "on_backend_error": policy}
    )
    metrics = RateLimitMetrics(registry).for_route("api", rate_policy)
    limiter = RateLimiter(rate_policy, "api", BrokenBackend(), metrics)
    if policy == "allow":
        decision = await limiter.check("k")
        assert decision.allowed
        assert decision.degraded
        assert ratelimit_headers(decision) == []
    else:
        with pytest.raises(RateLimiterUnavailable):
            await limiter.check("k")
    errors = "gateway_ratelimit_backend_errors_total"
    assert sample(registry, errors, route="api", policy=policy) == 1
    decision_label = "allowed" if policy == "allow" else "limited"
    assert (
        sample(registry, "gateway_ratelimit_decisions_total", route="api", decision=decision_label)
        == 1
    )
