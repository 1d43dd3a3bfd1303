"""Both services as real gunicorn processes (2 workers each) exporting to a real receiver.

One session-wide stack: an OTLP/HTTP receiver in a thread, then the downstream-mock,
then the gateway in front of it, each on a free loopback port, with their JSON logs in
files so the tests can join log lines to traces. Everything is stopped by PID when the
session ends, also when a test or the start-up failed.

The gateway runs the demo route table plus the suite's own routes (routes.yaml here):
retries, a circuit breaker on an upstream that refuses connections, and rate limits,
one of them in a Redis that is not there (both ports are held bound but not listening),
so that every panel of the dashboards' Resilience row can be shown data.

Service names: the gateway runs with OTEL_SERVICE_NAME set (to a value that is not its
built-in default, so the variable is shown to win); the mock runs without it, so its
built-in default `downstream-mock` is what the receiver must see.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.harness.processes import gateway_with_mock

from .support import (
    GATEWAY_SERVICE_NAME,
    OtlpReceiver,
    RefusedPort,
    Stack,
    write_route_table,
)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("observability")
    routes_file = write_route_table(workdir / "routes.yaml")
    dead_upstream = RefusedPort()
    dead_redis = RefusedPort()
    receiver = OtlpReceiver()
    receiver.start()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Export a batch every 200 ms instead of every 5 s, so spans arrive quickly.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    dead_origin = f"http://127.0.0.1:{dead_upstream.port}"
    try:
        with gateway_with_mock(
            workdir,
            env=otel,
            gateway_env={
                "OTEL_SERVICE_NAME": GATEWAY_SERVICE_NAME,
                "GATEWAY_ROUTES_FILE": str(routes_file),
                "OBSERVABILITY_DEAD_UPSTREAM": dead_origin,
                "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{dead_redis.port}/0",
            },
        ) as (gateway, mock):
            yield Stack(
                receiver=receiver,
                gateway=gateway,
                mock=mock,
                workdir=workdir,
                routes_file=routes_file,
                dead_upstream=dead_origin,
            )
    finally:
        receiver.stop()
        dead_redis.close()
        dead_upstream.close()
