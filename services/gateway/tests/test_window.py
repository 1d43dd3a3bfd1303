from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.window import SlidingCounter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_events_within_the_window() -> None:
    clock = FakeClock(1000.0)
    counter = SlidingCounter(10, clock=clock)
    counter.add()
    counter.add(3)
    assert counter.total() == 4
    clock.now += 9.5
    assert counter.total() == 4


def test_events_leave_on_bucket_boundaries() -> None:
    clock = FakeClock(1000.0)  # the start of a 1 s bucket
    counter = SlidingCounter(10, clock=clock)
    counter.add()  # bucket 1000
    clock.now = 1004.5
    counter.add(2)  # bucket 1004
    clock.now = 1009.99
    assert counter.total() == 3
    clock.now = 1010.0  # bucket 1000 is a full window old
    assert counter.total() == 2
    clock.now = 1014.0
    assert counter.total() == 0


def test_a_jump_past_the_whole_window_empties_it() -> None:
    clock = FakeClock()
    counter = SlidingCounter(5, buckets=5, clock=clock)
    counter.add(7)
    clock.now += 3600
    assert counter.total() == 0
    counter.add()
    assert counter.total() == 1


def test_a_clock_that_steps_back_counts_into_the_newest_bucket() -> None:
    clock = FakeClock(1000.0)
    counter = SlidingCounter(10, clock=clock)
    counter.add()
    clock.now = 990.0
    counter.add()
    assert counter.total() == 2
    clock.now = 1010.0
    assert counter.total() == 0


def test_clear() -> None:
    clock = FakeClock()
    counter = SlidingCounter(10, clock=clock)
    counter.add(5)
    counter.clear()
    assert counter.total() == 0
    counter.add()
    assert counter.total() == 1


@pytest.mark.parametrize(("window", "buckets"), [(0, 10), (-1, 10), (10, 0)])
def test_rejects_an_empty_window(window: float, buckets: int) -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        SlidingCounter(window, buckets=buckets)


@given(
    window=st.sampled_from([1.0, 2.5, 10.0, 60.0]),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=5), st.integers(min_value=0, max_value=3)),
        max_size=60,
    ),
)
def test_matches_a_list_of_timestamps(window: float, steps: list[tuple[float, int]]) -> None:
    """The total is every event whose bucket is one of the last `buckets` ones."""
    clock = FakeClock(123.0)
    counter = SlidingCounter(window, clock=clock)
    width = window / 10
    events: list[float] = []
    for advance, n in steps:
        clock.now += advance
        counter.add(n)
        events.extend([clock.now] * n)
        newest = math.floor(clock.now / width)
        expected = sum(1 for t in events if math.floor(t / width) > newest - 10)
        assert counter.total() == expected
        # Never more than an exact window of `window` would hold, never less than one
        # a bucket shorter.
        assert expected <= sum(1 for t in events if t > clock.now - window - 1e-9)
        assert expected >= sum(1 for t in events if t > clock.now - window + width + 1e-9)
