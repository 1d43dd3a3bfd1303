"""Retries: which failed attempts to try again, after how long, and how many in all.

A retry is worth making only when it cannot do harm, so `retry_decision` says yes only
if every one of these holds:

- the method is one the route lists as safe to repeat (by default the idempotent
  GET, HEAD, OPTIONS, PUT, DELETE; POST only if the operator adds it);
- the attempt failed before the upstream answered (`UpstreamUnreachable`: no
  connection; `UpstreamBroken`: the connection was reset or the reply was not HTTP),
  or it answered with one of the route's `on_status` codes. Timeouts are not retried:
  the upstream may still be working on the request, and the time is spent;
- the request body can be sent again: it was absent or read whole before the first
  attempt. A body streamed from the client is gone once sent and is never replayed;
- attempts remain (`attempts` counts the first one: 3 means up to 2 retries);
- the backoff fits in what is left of the route's total timeout;
- the upstream's retry budget has room (last, because a yes spends it).

Nothing is retried once any byte of the response has gone to the client; the proxy's
attempt loop ends there (see `retry_decision`).

Backoff is exponential with full jitter (AWS architecture blog, "Exponential Backoff
and Jitter"): the k-th retry waits uniform(0, min(backoff_max, backoff_base * 2**(k-1))),
so clients that failed together do not come back together.

The retry budget (`RetryBudget`, one per upstream origin, shared by every route to it)
is the one in Linkerd and Finagle: each original request deposits `ratio` of a retry,
and retries spend them, over a sliding window of `window_seconds`; `min_per_second`
keeps a few retries possible at low traffic. Formally a retry is allowed when, counting
it, the retries in the window stay at or below

    max(min_per_second * window_seconds, ratio * requests_in_window)

so with 100 % failure retries add at most `ratio` to the upstream's load once traffic
is above the floor, instead of multiplying an outage by `attempts`. (Envoy's
`retry_budget` bounds concurrent retries against concurrent requests instead; a rate is
easier to reason about and to test, and does not depend on upstream latency.) The floor
is an allowance per window, not a per-second cap: 3/s over 10 s allows a burst of 30.

Like the circuit breaker, a budget lives in one gunicorn worker: with W workers the
fleet-wide floor is W times larger, while the ratio holds everywhere.
"""

from __future__ import annotations

import random as _random
import re
import time
from collections.abc import Callable
from typing import Annotated

from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.errors import GatewayError, UpstreamBroken, UpstreamUnreachable
from gateway.window import Clock, SlidingCounter

# RFC 9110 section 5.6.2: a method is a token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

MAX_ATTEMPTS = 10
DEFAULT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_ON_STATUS = frozenset({502, 503, 504})

# An upstream status worth retrying is an error: 4xx (429, 408) or 5xx.
RetryStatus = Annotated[int, Field(ge=400, le=599)]

Outcome = int | GatewayError
"""What one attempt came to: the upstream's status code, or the error that ended it."""

RandomUnit = Callable[[], float]
"""Returns a float in [0, 1), as `random.random`; injected so tests choose the jitter."""


class RetryBudgetPolicy(BaseModel):
    """`retry.budget` in the route file; see the module docstring for the semantics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: float = Field(default=0.2, ge=0, le=1)
    min_per_second: float = Field(default=3.0, ge=0, le=10_000)
    window_seconds: float = Field(default=10.0, ge=1, le=3600)


class RetryPolicy(BaseModel):
    """`retry:` on a route. The default makes one attempt: retries are opt-in per route.

    ```yaml
    retry:
      attempts: 3                      # the first try and up to 2 retries
      methods: [GET, HEAD, PUT]        # default GET, HEAD, OPTIONS, PUT, DELETE
      on_status: [502, 503, 504]       # connect errors and resets always count
      backoff_base: 0.025              # seconds: the first retry waits up to this
      backoff_max: 1.0                 # seconds: no retry waits longer
      budget: {ratio: 0.2, min_per_second: 3, window_seconds: 10}
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(default=1, ge=1, le=MAX_ATTEMPTS)
    methods: frozenset[str] = Field(default=DEFAULT_METHODS, min_length=1)
    on_status: frozenset[RetryStatus] = DEFAULT_ON_STATUS
    backoff_base: float = Field(default=0.025, gt=0, le=60)
    backoff_max: float = Field(default=1.0, gt=0, le=300)
    budget: RetryBudgetPolicy = RetryBudgetPolicy()

    @field_validator("methods")
    @classmethod
    def _methods_are_tokens(cls, value: frozenset[str]) -> frozenset[str]:
        for method in value:
            if not _TOKEN.match(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        return frozenset(m.upper() for m in value)

    @model_validator(mode="after")
    def _backoff_max_bounds_base(self) -> RetryPolicy:
        if self.backoff_max < self.backoff_base:
            raise ValueError("backoff_max must not be less than backoff_base")
        return self

    @property
    def enabled(self) -> bool:
        """Whether this policy can ever retry; the proxy may skip its loop otherwise."""
        return self.attempts > 1


class RetryBudget:
    """How many retries one upstream may still take; see the module docstring.

    The proxy calls `record_request()` once per client request sent to the upstream
    (never for retries), and spends the budget only through `retry_decision`, which
    calls `try_spend()` as its last check. Not thread-safe: one per worker event loop.
    """

    __slots__ = ("_floor", "_on_exhausted", "_ratio", "_requests", "_retries", "policy")

    def __init__(
        self,
        policy: RetryBudgetPolicy,
        *,
        clock: Clock = time.monotonic,
        on_exhausted: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self._ratio = policy.ratio
        self._floor = policy.min_per_second * policy.window_seconds
        self._requests = SlidingCounter(policy.window_seconds, clock=clock)
        self._retries = SlidingCounter(policy.window_seconds, clock=clock)
        self._on_exhausted = on_exhausted

    def record_request(self) -> None:
        """One original request to this upstream: deposits `ratio` of a retry."""
        self._requests.add()

    def allowance(self) -> float:
        """Retries the current window may hold."""
        return max(self._floor, self._ratio * self._requests.total())

    def can_retry(self) -> bool:
        """Whether one more retry fits now; asks only, spends nothing."""
        return self._retries.total() + 1 <= self.allowance()

    def record_retry(self) -> None:
        """Spend one retry, whether or not it fitted (for callers that decide alone)."""
        self._retries.add()

    def try_spend(self) -> bool:
        """Spend one retry if it fits; a refusal is reported to `on_exhausted`."""
        if self.can_retry():
            self._retries.add()
            return True
        if self._on_exhausted is not None:
            self._on_exhausted()
        return False

    def counts(self) -> tuple[int, int]:
        """(requests, retries) in the current window: for tests and debugging."""
        return self._requests.total(), self._retries.total()


def retry_reason(outcome: Outcome, policy: RetryPolicy) -> str | None:
    """The metric label for retrying after `outcome`, or None if it is never retried.

    `connect_error` and `broken` match the outcomes of `gateway_upstream_requests_total`;
    a status reads `status_503`. Label values stay bounded by the route file.
    """
    if isinstance(outcome, int):
        return f"status_{outcome}" if outcome in policy.on_status else None
    if isinstance(outcome, UpstreamUnreachable):
        return "connect_error"
    if isinstance(outcome, UpstreamBroken):
        return "broken"
    return None


def backoff(policy: RetryPolicy, attempt: int, random: RandomUnit = _random.random) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 = the first try).

    Full jitter: uniform over [0, cap) with cap = min(backoff_max, backoff_base * 2**(attempt-1)),
    so the first retry waits up to `backoff_base` and the cap doubles from there.
    """
    exponent = min(max(attempt - 1, 0), 62)  # 2**62 * any base is past any backoff_max
    cap = min(policy.backoff_max, policy.backoff_base * 2.0**exponent)
    return cap * random()


def retry_decision(
    policy: RetryPolicy,
    method: str,
    attempt: int,
    outcome: Outcome,
    *,
    body_replayable: bool,
    deadline_remaining: float,
    budget: RetryBudget,
    random: RandomUnit = _random.random,
) -> float | None:
    """Seconds to wait before trying again, or None to answer the client with `outcome`.

    `attempt` is the number of the attempt that just ended (1 for the first try).
    `outcome` is its status code if the upstream answered, else the `GatewayError` it
    raised, already unwrapped to the proxy's own body error where there is one.
    `body_replayable` is False when the request body was streamed from the client.
    `deadline_remaining` is what is left of the route's total timeout, in seconds; the
    retry happens only if the backoff ends strictly before it.

    Only for attempts that failed before any response byte reached the client. The one
    side effect: a non-None answer has already spent one retry from `budget` (so that
    concurrent requests deciding during the backoff see it), and a refusal by the budget
    alone is counted by its `on_exhausted`.
    """
    if (
        attempt >= policy.attempts
        or method not in policy.methods
        or not body_replayable
        or retry_reason(outcome, policy) is None
    ):
        return None
    delay = backoff(policy, attempt, random)
    if delay >= deadline_remaining:
        return None
    if not budget.try_spend():
        return None
    return delay


class RetryMetrics:
    """The retry counters, created on `registry` (children are made on first use).

    `retried(route, reason)` once per retry that `retry_decision` allowed, with the
    reason from `retry_reason`; `budget_exhausted(upstream)` is what `RetryBudgets`
    hands each budget as its `on_exhausted`.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.retries = Counter(
            "gateway_upstream_retries_total",
            "Retries of upstream requests, by route and the reason for the retry"
            " (connect_error, broken, status_<code>).",
            ["route", "reason"],
            registry=registry,
        )
        self.exhausted = Counter(
            "gateway_retry_budget_exhausted_total",
            "Retries refused because the upstream's retry budget was spent.",
            ["upstream"],
            registry=registry,
        )

    def retried(self, route: str, reason: str) -> None:
        self.retries.labels(route, reason).inc()

    def budget_exhausted(self, upstream: str) -> None:
        self.exhausted.labels(upstream).inc()

    def exhausted_hook(self, upstream: str) -> Callable[[], None]:
        """A bound `on_exhausted` for one upstream; also exports its series at 0."""
        return self.exhausted.labels(upstream).inc


class RetryBudgets:
    """One `RetryBudget` per upstream origin (`Route.origin`), shared by its routes.

    Built once per worker at start-up: `add` every route that retries, then `get` per
    request. Routes to one origin that retry must agree on `retry.budget`: the budget
    protects the upstream, not the route. Requests of every route to the origin should
    be recorded, retrying or not, since all of them are load the ratio is taken of.
    """

    def __init__(
        self, metrics: RetryMetrics | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._budgets: dict[str, RetryBudget] = {}

    def add(self, upstream: str, policy: RetryBudgetPolicy) -> RetryBudget:
        """The budget for `upstream`; ValueError if it exists with another policy."""
        existing = self._budgets.get(upstream)
        if existing is not None:
            if existing.policy != policy:
                raise ValueError(f"routes to {upstream} set different retry budgets")
            return existing
        hook = self._metrics.exhausted_hook(upstream) if self._metrics is not None else None
        budget = RetryBudget(policy, clock=self._clock, on_exhausted=hook)
        self._budgets[upstream] = budget
        return budget

    def get(self, upstream: str) -> RetryBudget | None:
        return self._budgets.get(upstream)
