"""Circuit breaking: stop sending requests to an upstream that keeps failing.

One `CircuitBreaker` per upstream origin (`Route.origin`, scheme://host:port): routes
that share an origin share its breaker, because it is the upstream that is sick, not a
route. The breaker is configured by `circuit_breaker:` on the routes to that origin
(they must agree) and every route to the origin goes through it.

    closed ──(consecutive_failures in a row, or failure_ratio of at least
    │         min_requests outcomes within window_seconds)──> open
    open ──(open_seconds later, on the next request)──> half_open
    half_open ──(all half_open_probes succeed)──> closed
    half_open ──(any probe fails)──> open, for another open_seconds

While open, `before_request` raises `CircuitOpen` (503 problem+json with Retry-After)
without touching the upstream. Half-open lets exactly `half_open_probes` requests
through and refuses the rest until they have all answered.

A failure is a connect error, a broken connection, a timeout, or a status listed in
`failure_statuses` (default 502, 503, 504). A client that goes away or a body that is
too large says nothing about the upstream: `release` the permit instead of recording.

Each transition is logged once (logger `gateway.breaker`, fields `upstream`, `from`,
`to`, `reason`) and exported (`BreakerMetrics`). Every gunicorn worker has its own
breakers and trips them on what it sees itself; `gateway_circuit_state` is therefore
exported per worker (multiprocess mode `liveall`: a `pid` label under gunicorn, dead
workers dropped), and a dashboard shows the worst worker with
`max by (upstream) (gateway_circuit_state)`.

Results of requests let through in an earlier state (a slow request from before the
breaker opened, say) are ignored: only what happened since the last transition counts.
Not thread-safe: one registry belongs to one worker's event loop.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Iterator
from typing import Annotated

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import (
    GatewayError,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.window import Clock, SlidingCounter

logger = logging.getLogger("gateway.breaker")

FailureStatus = Annotated[int, Field(ge=400, le=599)]


class CircuitOpen(GatewayError):
    """503: the upstream's circuit is open; `Retry-After` says when to try again."""

    status = 503
    slug = "circuit-open"


class State(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


# The value of gateway_circuit_state: ordered so that max() over workers is the worst.
STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


class BreakerPolicy(BaseModel):
    """`circuit_breaker:` on a route; applies to the route's whole upstream origin.

    ```yaml
    circuit_breaker:
      consecutive_failures: 5      # this many failures in a row open it
      failure_ratio: 0.5           # or this share of failures within the window...
      min_requests: 20             # ...once the window holds at least this many outcomes
      window_seconds: 10
      open_seconds: 10             # how long it stays open before probing
      half_open_probes: 1          # trial requests; all must succeed to close
      failure_statuses: [502, 503, 504]
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    consecutive_failures: int = Field(default=5, ge=1, le=10_000)
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    window_seconds: float = Field(default=10.0, ge=1, le=3600)
    min_requests: int = Field(default=20, ge=1, le=1_000_000)
    open_seconds: float = Field(default=10.0, gt=0, le=3600)
    half_open_probes: int = Field(default=1, ge=1, le=100)
    failure_statuses: frozenset[FailureStatus] = frozenset({502, 503, 504})

    def verdict(self, outcome: int | GatewayError) -> bool | None:
        """True for a success, False for a failure, None when it says nothing of the upstream.

        `outcome` is the upstream's status code, or the error that ended the attempt.
        """
        if isinstance(outcome, int):
            return outcome not in self.failure_statuses
        if isinstance(outcome, UpstreamUnreachable | UpstreamBroken | UpstreamTimeout):
            return False
        return None


class Permit:
    """Leave to send one request; hand it back with `record` or `release`, exactly once."""

    __slots__ = ("done", "generation", "probe")

    def __init__(self, generation: int, *, probe: bool) -> None:
        self.generation = generation
        self.probe = probe
        self.done = False


class BreakerMetrics:
    """`gateway_circuit_state{upstream}` and `gateway_circuit_transitions_total{upstream,to}`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "gateway_circuit_state",
            "Circuit breaker state per upstream and worker: 0 closed, 1 half-open, 2 open.",
            ["upstream"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.transitions = Counter(
            "gateway_circuit_transitions_total",
            "Circuit breaker state changes, by upstream and the state entered.",
            ["upstream", "to"],
            registry=registry,
        )

    def track(self, upstream: str) -> None:
        """Export the upstream's series at start-up: closed, and no transitions yet."""
        self.state.labels(upstream).set(STATE_VALUE[State.CLOSED])
        for state in State:
            self.transitions.labels(upstream, state.value)

    def transition(self, upstream: str, to: State) -> None:
        self.state.labels(upstream).set(STATE_VALUE[to])
        self.transitions.labels(upstream, to.value).inc()


class CircuitBreaker:
    """The breaker for one upstream; see the module docstring for the rules.

    Per attempt: `permit = breaker.before_request()` (may raise `CircuitOpen`), then
    exactly one of `record(permit, success)` or `release(permit)`. A permit must always
    be handed back (use try/finally): a half-open probe that is never returned keeps
    the breaker refusing requests.
    """

    def __init__(
        self,
        upstream: str,
        policy: BreakerPolicy,
        *,
        clock: Clock = time.monotonic,
        metrics: BreakerMetrics | None = None,
    ) -> None:
        self.upstream = upstream
        self.policy = policy
        self._clock = clock
        self._metrics = metrics
        self._state = State.CLOSED
        # Bumped on every transition; permits from an older generation are ignored.
        self._generation = 0
        self._consecutive = 0
        self._outcomes = SlidingCounter(policy.window_seconds, clock=clock)
        self._failures = SlidingCounter(policy.window_seconds, clock=clock)
        self._opened_at = 0.0
        self._probes_out = 0  # probes handed out in this half-open period, not released
        self._probes_ok = 0
        if metrics is not None:
            metrics.track(upstream)

    @property
    def state(self) -> State:
        """The state now; an open breaker whose cool-down is over reads half-open."""
        if self._state is State.OPEN and self._open_remaining() <= 0:
            self._transition(State.HALF_OPEN, "cool_down_elapsed", "cool-down over, probing")
        return self._state

    def before_request(self) -> Permit:
        """A permit for one attempt, or `CircuitOpen` if the upstream must be spared."""
        state = self.state
        if state is State.CLOSED:
            return Permit(self._generation, probe=False)
        if state is State.HALF_OPEN and self._probes_out < self.policy.half_open_probes:
            self._probes_out += 1
            return Permit(self._generation, probe=True)
        # Open, or half-open with every probe handed out (answered or not: each is
        # used once). The probes will tell within a request's time: a second is a hint.
        seconds = max(1, math.ceil(self._open_remaining())) if state is State.OPEN else 1
        raise CircuitOpen(
            f"the upstream is failing; requests to it are refused for {seconds} s",
            headers=[(b"retry-after", str(seconds).encode())],
        )

    def record(self, permit: Permit, success: bool) -> None:
        """The attempt's verdict (see `BreakerPolicy.verdict`); may change the state."""
        if permit.done:
            return
        permit.done = True
        if permit.generation != self._generation:
            return  # let through before the last transition: no longer evidence
        if self._state is State.CLOSED:
            self._record_closed(success)
        elif self._state is State.HALF_OPEN and permit.probe:
            if not success:
                self._transition(State.OPEN, "probe_failed", "a half-open probe failed")
                return
            self._probes_ok += 1
            if self._probes_ok >= self.policy.half_open_probes:
                self._transition(State.CLOSED, "probes_succeeded", "the probes succeeded")

    def release(self, permit: Permit) -> None:
        """Hand back a permit without a verdict; a no-op after `record`."""
        if permit.done:
            return
        permit.done = True
        if permit.generation == self._generation and permit.probe:
            self._probes_out -= 1  # someone else may probe in its place

    def _record_closed(self, success: bool) -> None:
        self._outcomes.add()
        if success:
            self._consecutive = 0
            return
        self._consecutive += 1
        self._failures.add()
        policy = self.policy
        if self._consecutive >= policy.consecutive_failures:
            self._transition(
                State.OPEN, "consecutive_failures", f"{self._consecutive} failures in a row"
            )
            return
        outcomes = self._outcomes.total()
        failures = self._failures.total()
        if outcomes >= policy.min_requests and failures >= policy.failure_ratio * outcomes:
            self._transition(
                State.OPEN,
                "failure_ratio",
                f"{failures} of {outcomes} requests failed in {policy.window_seconds:g} s",
            )

    def _open_remaining(self) -> float:
        return self._opened_at + self.policy.open_seconds - self._clock()

    def _transition(self, to: State, reason: str, why: str) -> None:
        previous = self._state
        self._state = to
        self._generation += 1
        self._consecutive = 0
        self._outcomes.clear()
        self._failures.clear()
        self._probes_out = 0
        self._probes_ok = 0
        if to is State.OPEN:
            self._opened_at = self._clock()
        level = logging.WARNING if to is State.OPEN else logging.INFO
        logger.log(
            level,
            "circuit %s for %s: %s",
            to.value.replace("_", "-"),
            self.upstream,
            why,
            extra={
                "upstream": self.upstream,
                "from": previous.value,
                "to": to.value,
                "reason": reason,
            },
        )
        if self._metrics is not None:
            self._metrics.transition(self.upstream, to)


class Breakers:
    """The breakers of one worker, keyed by upstream origin (`Route.origin`).

    Built at start-up: `add(route.origin, route.circuit_breaker)` for every route that
    configures one; per request `get(route.origin)` (None: no breaker on that origin).
    """

    def __init__(
        self, metrics: BreakerMetrics | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def add(self, upstream: str, policy: BreakerPolicy) -> CircuitBreaker:
        """The breaker for `upstream`; ValueError if it exists with another policy."""
        existing = self._breakers.get(upstream)
        if existing is not None:
            if existing.policy != policy:
                raise ValueError(f"routes to {upstream} set different circuit_breaker policies")
            return existing
        breaker = CircuitBreaker(upstream, policy, clock=self._clock, metrics=self._metrics)
        self._breakers[upstream] = breaker
        return breaker

    def get(self, upstream: str) -> CircuitBreaker | None:
        return self._breakers.get(upstream)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(self._breakers.values())

    def __len__(self) -> int:
        return len(self._breakers)
