"""The gateway and the downstream-mock as real gunicorn processes, with every policy on.

One session-wide stack, each part on a free loopback port: a redis-server (Debian's
package; the suite fails, never skips, without it), a JWKS server in a thread, the mock
with 2 workers, then the gateway with 2 workers and tests/policies/routes.yaml. The
secrets the route file names (an HS256 secret, API key digests) are made per session and
handed to the gateway in its environment. Everything is stopped by PID when the session
ends, also when a test or the start-up failed.

GATEWAY_TRUSTED_PROXY_HOPS is 1, so a test picks its own rate-limit bucket by sending
`X-Forwarded-For: <documentation address>`; those addresses are labels, never contacted.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.harness.processes import gateway_with_mock

from .support import (
    ROUTES_FILE,
    JwksServer,
    RedisServer,
    RsaKey,
    Stack,
    new_hs256_secret,
)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("policies")
    redis = RedisServer(workdir)
    jwks = JwksServer()
    rsa_keys = {kid: RsaKey.generate(kid) for kid in ("k1", "k2", "intruder")}
    jwks.publish(rsa_keys["k1"])
    hs256_secret = new_hs256_secret()
    api_key = secrets.token_urlsafe(32)
    # Stored as digests only, with a name that becomes the subject; a second, unnamed key
    # shows that entries are separated by commas.
    api_keys = ",".join(
        [
            f"ci-bot:{hashlib.sha256(api_key.encode()).hexdigest()}",
            hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
        ]
    )
    try:
        redis.start()
        jwks.start()
        with gateway_with_mock(
            workdir,
            env={"OTEL_TRACES_EXPORTER": "none"},
            gateway_env={
                "GATEWAY_ROUTES_FILE": str(ROUTES_FILE),
                "GATEWAY_REDIS_URL": redis.url,
                "GATEWAY_TRUSTED_PROXY_HOPS": "1",
                "POLICIES_JWKS_URL": jwks.url,
                "POLICIES_HS256_SECRET": hs256_secret,
                "POLICIES_API_KEYS": api_keys,
            },
        ) as (gateway, mock):
            yield Stack(
                gateway=gateway,
                mock=mock,
                redis=redis,
                jwks=jwks,
                hs256_secret=hs256_secret,
                api_key=api_key,
                rsa_keys=rsa_keys,
                workdir=workdir,
            )
    finally:
        jwks.stop()
        redis.stop()
