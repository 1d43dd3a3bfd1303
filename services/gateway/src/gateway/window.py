"""A count of recent events over a sliding time window, in fixed buckets.

The retry budget and the circuit breaker both ask "how many of X in the last N
seconds?" on every request, so the answer must be O(1) and allocation-free. Events are
added to the bucket of the current time; a bucket's count leaves the total once the
bucket is `buckets` widths old. An event therefore counts for between
`window - window/buckets` and `window` seconds after it happened, depending on where in
its bucket it fell: with the default 10 buckets the window is exact to within 10 %.

Time comes from an injectable monotonic clock (seconds, as `time.monotonic`), so tests
drive it by hand. Not thread-safe: one instance belongs to one event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Clock = Callable[[], float]

DEFAULT_BUCKETS = 10


class SlidingCounter:
    """Events in the last `window_seconds`, to the precision of one bucket."""

    __slots__ = ("_clock", "_counts", "_current", "_total", "_width")

    def __init__(
        self,
        window_seconds: float,
        *,
        buckets: int = DEFAULT_BUCKETS,
        clock: Clock = time.monotonic,
    ) -> None:
        if window_seconds <= 0 or buckets < 1:
            raise ValueError("window_seconds must be positive and buckets at least 1")
        self._clock = clock
        self._width = window_seconds / buckets
        self._counts = [0] * buckets
        self._total = 0
        # The absolute index (time // width) of the newest bucket in use.
        self._current = self._index()

    def add(self, n: int = 1) -> None:
        self._advance()
        self._counts[self._current % len(self._counts)] += n
        self._total += n

    def total(self) -> int:
        self._advance()
        return self._total

    def clear(self) -> None:
        self._counts = [0] * len(self._counts)
        self._total = 0
        self._current = self._index()

    def _index(self) -> int:
        return math.floor(self._clock() / self._width)

    def _advance(self) -> None:
        now = self._index()
        if now <= self._current:
            return  # same bucket (or a clock that stood still or stepped back)
        size = len(self._counts)
        if now - self._current >= size:
            self._counts = [0] * size
            self._total = 0
        else:
            # The slots between the old newest bucket and now held events one window ago.
            for index in range(self._current + 1, now + 1):
                slot = index % size
                self._total -= self._counts[slot]
                self._counts[slot] = 0
        self._current = now
