"""Fixtures for the e2e suite: one client for the whole run, and the gateway being ready.

Tests marked `host_process` need E2E_GATEWAY_PID; without it they fail (never skip), so
a run that silently lost its host checks cannot look green. Deselect them with
`-m "not host_process"` where the gateway's processes are out of reach (kind).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest

from .support import BASE_URL, DEFAULT_TIMEOUT, GATEWAY_PID_ENV, require_gateway_pid

READY_TIMEOUT_SECONDS = 30.0


@pytest.fixture(scope="session")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=BASE_URL, timeout=DEFAULT_TIMEOUT) as client:
        yield client


@pytest.fixture(scope="session", autouse=True)
def _gateway_ready() -> None:
    """Wait (bounded) for the gateway's /readyz, so a slow start is not a wall of errors."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    last = "no attempt"
    with httpx.Client(base_url=BASE_URL, timeout=httpx.Timeout(2.0)) as probe:
        while time.monotonic() < deadline:
            try:
                response = probe.get("/readyz")
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            time.sleep(0.5)
    pytest.fail(
        f"the gateway at {BASE_URL} was not ready within {READY_TIMEOUT_SECONDS:.0f} s "
        f"(last: {last}); set E2E_BASE_URL to the gateway's address",
        pytrace=False,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # In the call phase, so a missing PID is a test failure rather than a setup error.
    if item.get_closest_marker("host_process") and not os.environ.get(GATEWAY_PID_ENV):
        require_gateway_pid()
