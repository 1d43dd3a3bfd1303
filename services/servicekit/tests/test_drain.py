"""The drain's timing and signal handling, driven by hand: no signals, a fake clock."""

from __future__ import annotations

import signal

import pytest
from uvicorn.config import Config

from servicekit.drain import SHUTDOWN_RESERVE, DrainingServer
from servicekit.health import HealthState
from servicekit.policy import HeadLimits, ServerPolicy

LIMITS = HeadLimits(max_count=10, max_bytes=4096, timeout=1.0)


async def nothing(scope: object, receive: object, send: object) -> None:  # pragma: no cover
    pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def server(
    *, delay: float = 2.0, grace: float = 10.0, policy: bool = True
) -> tuple[DrainingServer, HealthState, Clock]:
    health = HealthState()
    clock = Clock()
    config = Config(nothing, lifespan="off", log_config=None)
    chosen = ServerPolicy(health, delay, LIMITS) if policy else None
    built = DrainingServer(config, chosen, graceful_timeout=grace, clock=clock)
    built.started = True  # as after startup: listening, lifespan done
    return built, health, clock


async def test_sigterm_flips_readiness_at_once_and_keeps_serving() -> None:
    srv, health, clock = server(delay=2.0)
    srv.handle_exit(signal.SIGTERM, None)

    assert health.not_ready_reason() is not None  # before any tick: in the handler itself
    assert srv.guarded_state.draining  # responses now say Connection: close
    assert not srv.should_exit
    clock.now += 1.9
    assert await srv.on_tick(1) is False
    assert not srv.should_exit


async def test_after_the_delay_it_stops_accepting_within_the_grace() -> None:
    srv, _, clock = server(delay=2.0, grace=10.0)
    srv.handle_exit(signal.SIGTERM, None)
    clock.now += 2.05
    assert await srv.on_tick(1) is True
    assert srv.should_exit
    # What is left of the grace, minus the reserve for the lifespan shutdown.
    assert srv.config.timeout_graceful_shutdown == int(10.0 - 2.05 - SHUTDOWN_RESERVE)


async def test_a_zero_delay_stops_accepting_at_the_next_tick() -> None:
    srv, health, _ = server(delay=0.0)
    srv.handle_exit(signal.SIGTERM, None)
    assert health.draining
    assert await srv.on_tick(1) is True


async def test_a_second_sigterm_cuts_the_delay_short() -> None:
    srv, _, clock = server(delay=5.0)
    srv.handle_exit(signal.SIGTERM, None)
    clock.now += 1.0
    srv.handle_exit(signal.SIGTERM, None)
    assert srv.should_exit
    assert srv.config.timeout_graceful_shutdown == int(10.0 - 1.0 - SHUTDOWN_RESERVE)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
async def test_quick_shutdown_signals_skip_the_delay(sig: signal.Signals) -> None:
    srv, health, _ = server(delay=5.0)
    srv.handle_exit(sig, None)
    assert srv.should_exit
    assert not health.draining  # the lifespan shutdown flips it, not the signal


def test_a_second_sigint_forces_the_exit() -> None:
    srv, _, _ = server()
    srv.handle_exit(signal.SIGINT, None)
    srv.handle_exit(signal.SIGINT, None)
    assert srv.force_exit


def test_signals_are_not_kept_to_be_raised_again() -> None:
    # uvicorn re-raises the signals it caught once serve() ends; under gunicorn that
    # kills the worker by SIGTERM before its exit hooks run (traces unflushed).
    srv, _, _ = server(delay=1.0)
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        srv.handle_exit(sig, None)
    assert srv._captured_signals == []


def test_without_a_policy_sigterm_stops_at_once() -> None:
    srv, _, _ = server(policy=False)
    srv.handle_exit(signal.SIGTERM, None)
    assert srv.should_exit
    assert srv.drain_started is None


def test_sigterm_during_start_up_stops_at_once() -> None:
    srv, health, _ = server()
    srv.started = False
    srv.handle_exit(signal.SIGTERM, None)
    assert srv.should_exit
    assert not health.draining


def test_in_flight_requests_get_at_least_a_second() -> None:
    srv, _, clock = server(delay=2.0, grace=2.5)
    assert srv.config.timeout_graceful_shutdown == 1  # before any signal: all of the grace
    srv.handle_exit(signal.SIGTERM, None)
    clock.now += 2.0
    srv.handle_exit(signal.SIGTERM, None)
    assert srv.config.timeout_graceful_shutdown == 1


def test_the_server_state_carries_the_head_limits() -> None:
    srv, _, _ = server()
    assert srv.server_state is srv.guarded_state
    assert srv.guarded_state.head_limits == LIMITS
