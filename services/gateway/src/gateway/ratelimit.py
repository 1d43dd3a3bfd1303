"""Rate limits per route and client: the policy, the client key, the answer, the metrics.

A route with a `rate_limit:` gets one `RateLimiter`, built at start-up. Per request:

    key = limiter.key_for(client_ip=client_ip(...), subject=authenticated_subject)
    decision = await limiter.check(key)   # raises RateLimited (429) when over the limit
    response_headers += ratelimit_headers(decision)   # if successes carry them too

The limit is a token bucket (`ratelimit_bucket`): `burst` requests at once, then
`requests_per_second` on average. It lives in this worker's memory
(`ratelimit_memory`, a limit per worker) or in Redis (`ratelimit_redis`, one limit
across workers and replicas). When Redis fails, `on_backend_error` decides: `allow`
lets the request through (fail open), `deny` answers 503 (fail closed); either way
`gateway_ratelimit_backend_errors_total` counts it.

Errors, both `GatewayError`s, so the proxy turns them into problem+json:

    RateLimited              429  rate-limited            the client's bucket is empty
    RateLimiterUnavailable   503  rate-limit-unavailable  the backend failed, policy deny

The 429 carries `Retry-After` (whole seconds, at least 1) and the `RateLimit-Limit`,
`RateLimit-Remaining`, `RateLimit-Reset` fields of draft-ietf-httpapi-ratelimit-headers
(up to draft 06: separate fields, whole seconds), where Reset is the time until the
bucket is full again.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, Self

from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.asyncio import Redis

from gateway.errors import GatewayError
from gateway.ratelimit_bucket import BackendUnavailable, Decision
from gateway.ratelimit_memory import MemoryBackend
from gateway.ratelimit_redis import RedisBackend

__all__ = [
    "Decision",
    "RateLimitBackend",
    "RateLimitMetrics",
    "RateLimitPolicy",
    "RateLimited",
    "RateLimiter",
    "RateLimiterUnavailable",
    "build_rate_limiter",
    "rate_limit_key",
    "ratelimit_headers",
]

# Longest time a bucket may take to fill up; also bounds how long Redis keeps a key.
MAX_REFILL_SECONDS = 30 * 24 * 3600
# An IPv6 client usually holds a whole /64 and can pick any address in it, so
# addresses in one /64 share a bucket. (IPv4 addresses each count alone.)
IPV6_CLIENT_PREFIX = 64


class RateLimitPolicy(BaseModel):
    """A route's `rate_limit:` block in the route file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_second: float = Field(gt=0, le=1_000_000, allow_inf_nan=False)
    burst: int = Field(ge=1, le=1_000_000, description="bucket capacity: requests at once")
    # client_ip: the address from `forwarded.client_ip`. subject: the authenticated JWT
    # or API key subject, or the client address for requests without one. api_key: the
    # same as subject, for routes whose auth is api_key (reads better in the file).
    key: Literal["client_ip", "subject", "api_key"] = "client_ip"
    backend: Literal["memory", "redis"] = "memory"
    # What a request gets when the redis backend fails: allow (fail open) or deny (503).
    on_backend_error: Literal["allow", "deny"] = "allow"

    @model_validator(mode="after")
    def _refills_in_bounded_time(self) -> Self:
        if self.burst / self.requests_per_second > MAX_REFILL_SECONDS:
            raise ValueError(
                "burst / requests_per_second (the time to refill) must be at most 30 days"
            )
        return self


def rate_limit_key(
    kind: Literal["client_ip", "subject", "api_key"], *, client_ip: str, subject: str | None
) -> str:
    """Whose bucket a request takes from. Subjects and addresses never share a bucket."""
    if kind != "client_ip" and subject:
        return "sub:" + subject
    if ":" in client_ip:  # IPv6 (canonical, from forwarded.client_ip): its /64
        try:
            network = ipaddress.IPv6Network((client_ip, IPV6_CLIENT_PREFIX), strict=False)
        except ValueError:
            return "ip:" + client_ip
        return "ip:" + str(network)
    return "ip:" + client_ip


def _whole_seconds(seconds: float) -> int:
    # Rounded up, so a client that waits this long finds the token there; the small
    # allowance keeps 2.0000000001 (float noise) from becoming 3.
    return max(0, math.ceil(seconds - 1e-6))


def ratelimit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """`RateLimit-Limit`, `-Remaining`, `-Reset` for `decision`; none for a degraded one."""
    if decision.degraded:
        return []
    return [
        (b"ratelimit-limit", str(decision.limit).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(_whole_seconds(decision.reset_seconds)).encode()),
    ]


def retry_after_seconds(decision: Decision) -> int:
    """The `Retry-After` value: whole seconds, at least 1."""
    return max(1, _whole_seconds(decision.retry_after_seconds))


class RateLimited(GatewayError):
    """The client's bucket is empty: 429 with Retry-After and RateLimit-* headers."""

    status = 429
    slug = "rate-limited"

    def __init__(self, decision: Decision, *, route: str) -> None:
        retry_after = retry_after_seconds(decision)
        super().__init__(
            f"too many requests for route {route!r}; retry after {retry_after} s",
            headers=[(b"retry-after", str(retry_after).encode()), *ratelimit_headers(decision)],
        )
        self.decision = decision


class RateLimiterUnavailable(GatewayError):
    """The backend failed and the route's policy is to deny (fail closed)."""

    status = 503
    slug = "rate-limit-unavailable"

    def __init__(self, *, route: str) -> None:
        super().__init__(
            f"the rate limiter for route {route!r} is unavailable; retry shortly",
            headers=[(b"retry-after", b"1")],
        )


class RateLimitBackend(Protocol):
    async def take(self, key: str) -> Decision:
        """Take one token from `key`'s bucket; `BackendUnavailable` if it cannot tell."""
        ...


@dataclass(frozen=True, slots=True)
class RouteRateLimitMetrics:
    allowed: Counter
    limited: Counter
    backend_errors: Counter


class RateLimitMetrics:
    """The rate-limit counters, on an injected registry; children bound per route."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "gateway_ratelimit_decisions_total",
            "Rate-limit checks by route and decision (allowed, limited); decisions made by"
            " on_backend_error when the backend failed are included.",
            ["route", "decision"],
            registry=registry,
        )
        self.backend_errors = Counter(
            "gateway_ratelimit_backend_errors_total",
            "Rate-limit checks the backend (Redis) could not answer, by route and the"
            " policy applied instead (allow: let through, deny: refused with 503).",
            ["route", "policy"],
            registry=registry,
        )

    def for_route(self, route: str, policy: RateLimitPolicy) -> RouteRateLimitMetrics:
        return RouteRateLimitMetrics(
            allowed=self.decisions.labels(route, "allowed"),
            limited=self.decisions.labels(route, "limited"),
            backend_errors=self.backend_errors.labels(route, policy.on_backend_error),
        )


class RateLimiter:
    """One route's limit. `check` raises when the request must not go on."""

    def __init__(
        self,
        policy: RateLimitPolicy,
        route: str,
        backend: RateLimitBackend,
        metrics: RouteRateLimitMetrics,
    ) -> None:
        self.policy = policy
        self.route = route
        self.backend = backend
        self._metrics = metrics
        self._fail_open = policy.on_backend_error == "allow"

    def key_for(self, *, client_ip: str, subject: str | None = None) -> str:
        """The bucket key for a request, by this route's `key` setting."""
        return rate_limit_key(self.policy.key, client_ip=client_ip, subject=subject)

    async def check(self, key: str) -> Decision:
        """Take a token for `key`.

        Returns the decision when the request may go on (also when the backend failed
        and the policy is allow: then `decision.degraded`). Raises `RateLimited` when the
        bucket is empty and `RateLimiterUnavailable` when the backend failed and the
        policy is deny.
        """
        metrics = self._metrics
        try:
            decision = await self.backend.take(key)
        except BackendUnavailable:
            metrics.backend_errors.inc()
            if self._fail_open:
                metrics.allowed.inc()
                return Decision.without_backend(True, capacity=self.policy.burst)
            metrics.limited.inc()
            raise RateLimiterUnavailable(route=self.route) from None
        if decision.allowed:
            metrics.allowed.inc()
            return decision
        metrics.limited.inc()
        raise RateLimited(decision, route=self.route)


def build_rate_limiter(
    policy: RateLimitPolicy,
    route_name: str,
    *,
    redis_client: Redis | None,
    metrics: RateLimitMetrics,
    redis_timeout: float = 0.1,
    memory_max_keys: int = 50_000,
    clock: Callable[[], float] = time.monotonic,
) -> RateLimiter:
    """The limiter for one route, with the backend its policy names.

    `redis_client` (from `ratelimit_redis.connect_redis`, one per worker) is needed only
    for `backend: redis`; without it this raises ValueError, which start-up should turn
    into one line naming the route. `clock` (monotonic seconds) is for tests.
    """
    backend: RateLimitBackend
    if policy.backend == "redis":
        if redis_client is None:
            raise ValueError(
                f"route {route_name!r} uses rate_limit.backend redis, but no Redis is"
                " configured (GATEWAY_REDIS_URL)"
            )
        backend = RedisBackend(
            redis_client,
            route=route_name,
            rate=policy.requests_per_second,
            capacity=policy.burst,
            timeout=redis_timeout,
            clock=clock,
        )
    else:
        backend = MemoryBackend(
            rate=policy.requests_per_second,
            capacity=policy.burst,
            max_keys=memory_max_keys,
            clock=clock,
        )
    return RateLimiter(policy, route_name, backend, metrics.for_route(route_name, policy))
