"""Each route's policies, bundled for the proxy: auth, rate limit, breaker, retries.

    admit()            who is calling (401/403) and whether they may now (429)
    permit()           whether the upstream may be tried at all (503 circuit-open)
    settle()           what one attempt's outcome tells the breaker
    retry_delay()      whether to try again, and after how long

Built per worker in the lifespan (after fork): JWKS caches, Redis connections, token
buckets, breakers and retry budgets are all per process. Routes that share an upstream
origin share its breaker and retry budget. The metric families are created once per app,
in `PolicyMetrics`, so a second lifespan on the same registry does not register twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gateway.auth import (
    ANONYMOUS,
    Authenticator,
    Principal,
    build_authenticator,
    principal_headers,
    strip_client_auth_headers,
)
from gateway.auth_policy import NoAuthPolicy
from gateway.breaker import BreakerMetrics, Breakers, CircuitBreaker, Permit
from gateway.forwarded import client_ip, forwarded_for_values
from gateway.ratelimit import RateLimiter, RateLimitMetrics, build_rate_limiter
from gateway.retry import (
    Outcome,
    RetryBudget,
    RetryBudgets,
    RetryMetrics,
    retry_decision,
    retry_reason,
)
from gateway.routing import Route

RawHeaders = Sequence[tuple[bytes, bytes]]


class PolicyMetrics:
    """The policy metric families of one app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.retries = RetryMetrics(registry)
        self.breakers = BreakerMetrics(registry)
        self.rate_limits = RateLimitMetrics(registry)


@dataclass(slots=True)
class RouteGuards:
    route: Route
    authenticator: Authenticator | None = None
    limiter: RateLimiter | None = None
    breaker: CircuitBreaker | None = None
    budget: RetryBudget | None = None
    metrics: RetryMetrics | None = None
    trusted_proxy_hops: int = 0
    drop_headers: frozenset[bytes] = field(default_factory=frozenset)

    async def admit(self, headers: RawHeaders, peer: str | None) -> Principal:
        """Authenticate, then take a rate-limit token; raises 401, 403 or 429."""
        principal = ANONYMOUS
        if self.authenticator is not None:
            principal = await self.authenticator.authenticate(headers)
        if self.limiter is not None:
            address = client_ip(peer, forwarded_for_values(headers), self.trusted_proxy_hops)
            await self.limiter.check(
                self.limiter.key_for(client_ip=address, subject=principal.subject)
            )
        return principal

    def upstream_headers(
        self, headers: RawHeaders, principal: Principal
    ) -> list[tuple[bytes, bytes]]:
        """The client's headers minus any X-Auth-* it sent, plus the ones we vouch for."""
        kept = strip_client_auth_headers(headers, drop=self.drop_headers)
        if not principal.anonymous:
            kept.extend(principal_headers(principal))
        return kept

    def start(self) -> None:
        """Count one client request towards the upstream's retry budget."""
        if self.budget is not None:
            self.budget.record_request()

    def permit(self) -> Permit | None:
        """Raises CircuitOpen while the upstream's breaker is open."""
        return self.breaker.before_request() if self.breaker is not None else None

    def settle(self, permit: Permit | None, outcome: Outcome) -> None:
        if permit is None or self.breaker is None:
            return
        verdict = self.breaker.policy.verdict(outcome)
        if verdict is None:
            self.breaker.release(permit)
        else:
            self.breaker.record(permit, verdict)

    def release(self, permit: Permit | None) -> None:
        if permit is not None and self.breaker is not None:
            self.breaker.release(permit)

    def retry_delay(
        self, method: str, attempt: int, outcome: Outcome, *, replayable: bool, remaining: float
    ) -> float | None:
        """Seconds to wait before the next attempt, or None: do not retry."""
        policy = self.route.retry
        if not policy.enabled or self.budget is None:
            return None
        delay = retry_decision(
            policy,
            method,
            attempt,
            outcome,
            body_replayable=replayable,
            deadline_remaining=remaining,
            budget=self.budget,
        )
        if delay is not None and self.metrics is not None:
            self.metrics.retried(self.route.name, retry_reason(outcome, policy) or "other")
        return delay


@dataclass(slots=True)
class Guards:
    """All routes' guards, and the per-worker resources they hold."""

    by_route: dict[str, RouteGuards]
    authenticators: list[Authenticator]
    http: httpx.AsyncClient | None
    redis: Redis | None

    async def start(self) -> None:
        for authenticator in self.authenticators:
            await authenticator.start()

    async def aclose(self) -> None:
        for authenticator in self.authenticators:
            await authenticator.aclose()
        if self.http is not None:
            await self.http.aclose()
        if self.redis is not None:
            await self.redis.aclose()


def build_guards(
    routes: Iterable[Route],
    metrics: PolicyMetrics,
    *,
    redis: Redis | None,
    redis_timeout: float,
    memory_max_keys: int,
    trusted_proxy_hops: int,
) -> Guards:
    """Every route's guards; raises ValueError naming the route if one cannot be built."""
    breakers = Breakers(metrics.breakers, clock=time.monotonic)
    budgets = RetryBudgets(metrics.retries, clock=time.monotonic)
    needs_http = any(not isinstance(r.auth, NoAuthPolicy) for r in routes)
    http = httpx.AsyncClient(timeout=5.0) if needs_http else None
    by_route: dict[str, RouteGuards] = {}
    authenticators: list[Authenticator] = []
    for route in routes:
        guards = RouteGuards(route, metrics=metrics.retries, trusted_proxy_hops=trusted_proxy_hops)
        if not isinstance(route.auth, NoAuthPolicy):
            guards.authenticator = build_authenticator(route.auth, http=http)
            guards.drop_headers = guards.authenticator.drop_headers
            authenticators.append(guards.authenticator)
        if route.rate_limit is not None:
            guards.limiter = build_rate_limiter(
                route.rate_limit,
                route.name,
                redis_client=redis,
                metrics=metrics.rate_limits,
                redis_timeout=redis_timeout,
                memory_max_keys=memory_max_keys,
            )
        if route.circuit_breaker is not None:
            guards.breaker = breakers.get(route.origin) or breakers.add(
                route.origin, route.circuit_breaker
            )
        if route.retry.enabled:
            guards.budget = budgets.get(route.origin) or budgets.add(
                route.origin, route.retry.budget
            )
        by_route[route.name] = guards
    return Guards(by_route, authenticators, http, redis)
