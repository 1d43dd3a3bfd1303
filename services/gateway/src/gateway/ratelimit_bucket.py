"""The token bucket both rate-limit backends share, and the decision it gives.

A bucket holds up to `capacity` tokens (the route's `burst`) and gains `rate` tokens per
second (`requests_per_second`); each request takes one token or is refused. A new or
long-idle bucket is full, so a client may send `burst` requests at once and then
`requests_per_second` on average. The state is two numbers, tokens and the time they
were counted, refilled lazily by the time elapsed since: nothing runs between requests.

The Lua script in `ratelimit_redis` is this same arithmetic; keep the two in step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

# Float time arithmetic can leave a bucket at 0.9999999999 tokens when it is really
# full enough; this much is forgiven so that exact schedules give exact counts.
EPSILON = 1e-9


def refill_and_take(
    tokens: float, elapsed: float, *, rate: float, capacity: int
) -> tuple[bool, float]:
    """Refill a bucket holding `tokens` for `elapsed` seconds, then try to take one token.

    Returns whether a token was taken and the tokens left. A clock that went backwards
    (`elapsed` < 0) refills nothing rather than draining the bucket.
    """
    tokens = min(float(capacity), tokens + max(0.0, elapsed) * rate)
    if tokens >= 1.0 - EPSILON:
        return True, max(0.0, tokens - 1.0)
    return False, tokens


class Decision(NamedTuple):
    """What one check decided, with what the RateLimit-* headers report.

    `limit` is the bucket's capacity; `remaining` the whole tokens left after this
    request; `reset_seconds` the time until the bucket is full again (Remaining back at
    Limit); `retry_after_seconds` the time until one token is back when this request was
    refused, 0 when it was allowed. `degraded` marks a decision the backend did not
    make (it failed and `on_backend_error` decided): its counts mean nothing.

    A NamedTuple rather than a frozen dataclass: one is made per request, and it is
    several times cheaper to build.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float
    retry_after_seconds: float
    degraded: bool = False

    @classmethod
    def of(cls, allowed: bool, tokens: float, *, rate: float, capacity: int) -> Decision:
        """The decision for a bucket left with `tokens` after this request."""
        return cls(
            allowed=allowed,
            limit=capacity,
            remaining=max(0, math.floor(tokens + EPSILON)),
            reset_seconds=max(0.0, (capacity - tokens) / rate),
            retry_after_seconds=0.0 if allowed else max(0.0, (1.0 - tokens) / rate),
        )

    @classmethod
    def without_backend(cls, allowed: bool, *, capacity: int) -> Decision:
        """The decision when the backend could not be asked (see `on_backend_error`)."""
        return cls(
            allowed=allowed,
            limit=capacity,
            remaining=0,
            reset_seconds=0.0,
            retry_after_seconds=0.0 if allowed else 1.0,
            degraded=True,
        )


class BackendUnavailable(Exception):
    """The backend could not decide (unreachable, too slow, or a bad reply)."""
