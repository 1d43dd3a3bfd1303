"""Clients that vanish mid-download leave nothing behind in the gateway (host_process).

A gateway that keeps an upstream response open after its client left leaks one upstream
connection (and its buffers) per disconnect. After ten disconnects the workers' upstream
connections must be back to what keep-alive pooling leaves - bounded by the number of
workers, not growing with the number of disconnects - and the gateway must answer normally.
"""

from __future__ import annotations

import httpx
import pytest

from .support import BASE_URL, GatewayProcesses, MiB, UpstreamConnection, echo, wait_until

pytestmark = pytest.mark.host_process

DOWNLOAD = 100 * MiB
READ_BEFORE_LEAVING = MiB
SETTLE_SECONDS = 10.0


def start_and_abandon_download(client: httpx.Client) -> int:
    """Read about 1 MiB of a 100 MiB download, then close the connection."""
    received = 0
    with client.stream(
        "GET", f"/mock/bytes/{DOWNLOAD}", timeout=httpx.Timeout(15.0, connect=5.0)
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += len(chunk)
            if received >= READ_BEFORE_LEAVING:
                break
    # Leaving the block with the body unread closes this connection (httpx cannot reuse it).
    return received


def test_abandoned_downloads_leak_no_upstream_connections() -> None:
    gateway = GatewayProcesses.from_env()
    worker_pids = {worker.pid for worker in gateway.workers()}
    workers = len(worker_pids)
    disconnects = max(10, 3 * workers)
    idle_allowance = 2 * workers  # what keep-alive pools may keep open between requests
    before = gateway.upstream_connections()

    # A client of its own, so that no other test's pooled connection is involved.
    with httpx.Client(base_url=BASE_URL, timeout=httpx.Timeout(15.0, connect=5.0)) as c:
        for _ in range(disconnects):
            assert start_and_abandon_download(c) >= READ_BEFORE_LEAVING

    current: list[UpstreamConnection] = []

    def settled() -> bool:
        current[:] = gateway.upstream_connections()
        return len(current) <= idle_allowance

    wait_until(settled, timeout=SETTLE_SECONDS, interval=0.25)
    report = (
        f"{len(current)} upstream connections {SETTLE_SECONDS:.0f} s after {disconnects} "
        f"abandoned downloads ({workers} workers, {len(before)} before): {current}"
    )
    assert len(current) <= idle_allowance, report
    assert len(current) < disconnects, report

    # Fresh connections, so that the requests spread over the workers.
    for _ in range(2 * workers):
        with httpx.Client(base_url=BASE_URL, timeout=httpx.Timeout(10.0, connect=5.0)) as c:
            assert echo(c.get("/mock/echo"))["path"] == "/echo"
    after = {worker.pid for worker in gateway.workers()}
    assert after == worker_pids, f"gateway workers changed from {worker_pids} to {after}"
