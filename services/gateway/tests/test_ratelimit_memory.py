"""The token bucket arithmetic and the in-memory backend, on a clock the tests move."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ratelimit_bucket import Decision, refill_and_take
from gateway.ratelimit_memory import MemoryBackend


class FrozenClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def backend(
    *, rate: float = 1.0, capacity: int = 5, max_keys: int = 1000
) -> tuple[MemoryBackend, FrozenClock]:
    clock = FrozenClock()
    return MemoryBackend(rate=rate, capacity=capacity, max_keys=max_keys, clock=clock), clock


# --- the arithmetic ---------------------------------------------------------------------


def test_refill_and_take() -> None:
    assert refill_and_take(5.0, 0.0, rate=1.0, capacity=5) == (True, 4.0)
    assert refill_and_take(0.0, 0.5, rate=1.0, capacity=5) == (False, 0.5)
    assert refill_and_take(0.5, 0.5, rate=1.0, capacity=5) == (True, 0.0)
    assert refill_and_take(0.0, 1e9, rate=1.0, capacity=5) == (True, 4.0)  # capped


def test_a_clock_going_backwards_refills_nothing() -> None:
    assert refill_and_take(0.5, -10.0, rate=1.0, capacity=5) == (False, 0.5)


def test_decision_of_an_allowed_request() -> None:
    decision = Decision.of(True, 2.5, rate=0.5, capacity=10)
    assert decision == Decision(
        allowed=True, limit=10, remaining=2, reset_seconds=15.0, retry_after_seconds=0.0
    )


def test_decision_of_a_refused_request() -> None:
    decision = Decision.of(False, 0.25, rate=0.5, capacity=10)
    assert not decision.allowed
    assert decision.remaining == 0
    assert decision.retry_after_seconds == 1.5  # 0.75 tokens at 0.5 per second
    assert decision.reset_seconds == 19.5


# --- exact counts on a frozen clock -----------------------------------------------------


@pytest.mark.parametrize("burst", [1, 2, 7, 100])
async def test_exactly_burst_allowed_then_refused(burst: int) -> None:
    limiter, _ = backend(rate=1.0, capacity=burst)
    decisions = [await limiter.take("ip:203.0.113.7") for _ in range(burst + 5)]
    assert [d.allowed for d in decisions] == [True] * burst + [False] * 5
    assert [d.remaining for d in decisions[:burst]] == list(range(burst - 1, -1, -1))
    assert all(d.limit == burst for d in decisions)
    assert decisions[-1].retry_after_seconds == pytest.approx(1.0)
    assert decisions[-1].reset_seconds == pytest.approx(burst)


async def test_refills_by_the_time_elapsed() -> None:
    limiter, clock = backend(rate=10.0, capacity=3)
    assert [(await limiter.take("k")).allowed for _ in range(4)] == [True, True, True, False]
    clock.advance(0.05)  # half a token
    assert not (await limiter.take("k")).allowed
    clock.advance(0.05)  # one token
    assert (await limiter.take("k")).allowed
    assert not (await limiter.take("k")).allowed
    clock.advance(0.2)  # two tokens
    assert [(await limiter.take("k")).allowed for _ in range(3)] == [True, True, False]


async def test_a_long_pause_refills_to_the_burst_and_no_further() -> None:
    limiter, clock = backend(rate=2.0, capacity=4)
    for _ in range(4):
        await limiter.take("k")
    clock.advance(3600)
    allowed = [(await limiter.take("k")).allowed for _ in range(6)]
    assert allowed == [True] * 4 + [False] * 2


async def test_keys_have_separate_buckets() -> None:
    limiter, _ = backend(capacity=2)
    assert [(await limiter.take("a")).allowed for _ in range(3)] == [True, True, False]
    assert [(await limiter.take("b")).allowed for _ in range(3)] == [True, True, False]


async def test_fractional_rates_give_exact_schedules() -> None:
    # 1 request every 4 s, burst 1: allowed at t=0, 4, 8; never in between.
    limiter, clock = backend(rate=0.25, capacity=1)
    allowed_at = []
    for tick in range(40):
        if (await limiter.take("k")).allowed:
            allowed_at.append(tick * 0.25)
        clock.advance(0.25)
    assert allowed_at == [0.0, 4.0, 8.0]


@given(
    rate=st.floats(min_value=0.01, max_value=1000),
    capacity=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.floats(min_value=0, max_value=5), max_size=200),
)
def test_never_more_than_burst_plus_what_the_rate_refilled(
    rate: float, capacity: int, steps: list[float]
) -> None:
    limiter, clock = backend(rate=rate, capacity=capacity)
    allowed = 0
    for step in steps:
        clock.advance(step)
        decision = limiter.take_now("k")
        allowed += decision.allowed
        assert 0 <= decision.remaining <= capacity - 1 or not decision.allowed
    elapsed = sum(steps)
    assert allowed <= capacity + math.floor(elapsed * rate + 1e-6)


# --- bounded memory ---------------------------------------------------------------------


async def test_a_flood_of_distinct_keys_stays_within_max_keys() -> None:
    limiter, _ = backend(rate=1.0, capacity=5, max_keys=100)
    for i in range(10_000):
        await limiter.take(f"ip:10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        assert len(limiter) <= 100
    assert len(limiter) == 100


async def test_the_least_recently_used_bucket_is_evicted_first() -> None:
    limiter, _ = backend(rate=1.0, capacity=2, max_keys=3)
    for key in ("a", "b", "c"):
        await limiter.take(key)
    await limiter.take("a")  # "a" is now the most recently used; "b" the least
    await limiter.take("d")
    assert len(limiter) == 3
    # "a" kept its bucket (empty now); "b" lost its bucket and starts full again.
    assert not (await limiter.take("a")).allowed
    assert (await limiter.take("b")).remaining == 1


async def test_idle_buckets_age_out_without_changing_any_decision() -> None:
    limiter, clock = backend(rate=1.0, capacity=5, max_keys=1000)
    for i in range(50):
        await limiter.take(f"idle-{i}")
    clock.advance(5.0)  # long enough for each of them to be full again
    decision = await limiter.take("new")
    assert len(limiter) == 1  # the 50 full buckets went; they were worth nothing
    assert decision.remaining == 4
    assert (await limiter.take("idle-0")).remaining == 4  # as it would have been


async def test_buckets_still_refilling_are_kept() -> None:
    limiter, clock = backend(rate=1.0, capacity=5, max_keys=1000)
    for _ in range(5):
        await limiter.take("busy")
    clock.advance(4.0)  # one token short of full
    await limiter.take("other")
    assert len(limiter) == 2
    assert (await limiter.take("busy")).remaining == 3  # 4 refilled, 1 taken


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryBackend(rate=1.0, capacity=1, max_keys=0)
