"""Both services as real gunicorn processes (2 workers each) exporting to a real receiver.

One session-wide stack: an OTLP/HTTP receiver in a thread, then the downstream-mock,
then the gateway in front of it, each on a free loopback port, with their JSON logs in
files so the tests can join log lines to traces. Everything is stopped by PID when the
session ends, also when a test or the start-up failed.

Service names: the gateway runs with OTEL_SERVICE_NAME set (to a value that is not its
built-in default, so the variable is shown to win); the mock runs without it, so its
built-in default `downstream-mock` is what the receiver must see.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.harness.processes import ROOT, gateway_with_mock

from .support import GATEWAY_SERVICE_NAME, OtlpReceiver, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("observability")
    receiver = OtlpReceiver()
    receiver.start()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Export a batch every 200 ms instead of every 5 s, so spans arrive quickly.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    try:
        with gateway_with_mock(
            workdir,
            env=otel,
            gateway_env={
                "OTEL_SERVICE_NAME": GATEWAY_SERVICE_NAME,
                "GATEWAY_ROUTES_FILE": str(ROOT / "services/gateway/routes.yaml"),
            },
        ) as (gateway, mock):
            yield Stack(receiver=receiver, gateway=gateway, mock=mock, workdir=workdir)
    finally:
        receiver.stop()
