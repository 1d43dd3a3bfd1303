"""Token buckets in this process's memory: the `memory` rate-limit backend.

Per worker, by design: each gunicorn worker (and each replica) keeps its own buckets,
and requests are spread over workers by the kernel, so with W workers a client gets
up to W times the burst before every worker has refused it. Use it where an
approximate limit is enough and no Redis is wanted; use the `redis` backend for a
limit that holds across workers and replicas.

Memory is bounded. A bucket that has been idle long enough to be full again is the
same as no bucket, so idle buckets are dropped as they age out; on top of that at most
`max_keys` buckets are kept, the least recently used going first, so a flood of
distinct client addresses costs a fixed amount of memory (about 250 bytes a bucket:
12 MB for the default 50,000, per route and worker). The price of the hard bound: while
it is being hit, an evicted client gets a fresh, full bucket on its next request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.ratelimit_bucket import Decision, refill_and_take

Clock = Callable[[], float]


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class MemoryBackend:
    """Buckets keyed by any string, refilled at `rate` tokens per second up to `capacity`.

    `clock` is monotonic seconds; tests pass a frozen one. `take` never awaits, so on one
    event loop every check is atomic without a lock.
    """

    def __init__(
        self,
        *,
        rate: float,
        capacity: int,
        max_keys: int = 50_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.capacity = capacity
        self.max_keys = max_keys
        self._clock = clock
        # Least recently used first. Any bucket idle for `capacity / rate` seconds is full,
        # and the first bucket is the one idle longest, so ageing out can stop at the
        # first bucket that is not idle for that long.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._full_after = capacity / rate

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str) -> Decision:
        return self.take_now(key)

    def take_now(self, key: str) -> Decision:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._forget_idle(now)
            bucket = _Bucket(float(self.capacity), now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        allowed, bucket.tokens = refill_and_take(
            bucket.tokens, now - bucket.updated, rate=self.rate, capacity=self.capacity
        )
        bucket.updated = now
        return Decision.of(allowed, bucket.tokens, rate=self.rate, capacity=self.capacity)

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that are full again (no loss), then the oldest beyond `max_keys`."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.updated < self._full_after:
                break
            buckets.popitem(last=False)
        while len(buckets) >= self.max_keys:
            buckets.popitem(last=False)
