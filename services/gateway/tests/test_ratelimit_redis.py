"""The Redis rate-limit backend against a real redis-server that these tests start.

The server runs on a free loopback port with a temporary directory and no persistence,
and is stopped by its PID. Without a `redis-server` binary these tests fail (they never
skip): install it (Debian/Ubuntu: `apt-get install redis-server`) or point the
`REDIS_SERVER` variable at one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gateway.ratelimit import (
    Decision,
    RateLimited,
    RateLimiter,
    RateLimiterUnavailable,
    RateLimitMetrics,
    RateLimitPolicy,
    build_rate_limiter,
)
from gateway.ratelimit_redis import (
    KEY_PREFIX,
    TOKEN_BUCKET_SCRIPT,
    bucket_key,
    connect_redis,
)

# Generous for the counting tests, so a slow CI machine never turns a check into a
# backend error; the failure tests use their own short timeout.
TIMEOUT = 2.0
SHORT_TIMEOUT = 0.05
# How much longer than its timeout a failing check may take: scheduling, not waiting.
SLACK = 0.25


def redis_server_binary() -> str:
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if binary is None and os.access("/usr/bin/redis-server", os.X_OK):
        binary = "/usr/bin/redis-server"
    if binary is None or not os.access(binary, os.X_OK):
        pytest.fail(
            "redis-server not found: the rate-limit tests need a real Redis. Install it"
            " (Debian/Ubuntu: sudo apt-get install redis-server) or set REDIS_SERVER to"
            " the path of a redis-server binary.",
            pytrace=False,
        )
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process of our own, on 127.0.0.1."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # Another process may take the free port before redis binds it: try a few.
        for _ in range(3):
            self.port = free_port()
            log = self.directory / f"redis-{self.port}.log"
            options = {
                "bind": "127.0.0.1",
                "port": str(self.port),
                "dir": str(self.directory),
                "save": "",  # no snapshots, no append-only file: nothing outlives the test
                "appendonly": "no",
                "daemonize": "no",  # stays our child, so its PID is the one we stop
                "protected-mode": "yes",
            }
            argv = [self.binary, *(part for k, v in options.items() for part in (f"--{k}", v))]
            with log.open("wb") as out:
                self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return
            self.stop()
        pytest.fail(f"redis-server did not start; its log:\n{log.read_text()[-2000:]}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with redis.Redis(port=self.port, socket_timeout=0.5) as probe:
                    if probe.ping():
                        return True
            except redis.ConnectionError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client for looking inside Redis; every test starts with it empty."""
    with redis.Redis(port=redis_server.port) as client:
        client.flushall()
        yield client
        client.client_unpause()


@pytest.fixture
async def client(redis_server: RedisServer, admin: redis.Redis) -> AsyncIterator[Redis]:
    connection = connect_redis(redis_server.url, timeout=TIMEOUT)
    yield connection
    await connection.aclose()


class Clock:
    """Monotonic seconds for the backend's cool-down; refills use Redis's own clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_limiter(
    redis_client: Redis,
    *,
    route: str = "api",
    registry: CollectorRegistry | None = None,
    timeout: float = TIMEOUT,
    clock: Clock | None = None,
    **policy: Any,
) -> RateLimiter:
    settings = {"requests_per_second": 0.001, "burst": 5, "backend": "redis", **policy}
    return build_rate_limiter(
        RateLimitPolicy.model_validate(settings),
        route,
        redis_client=redis_client,
        metrics=RateLimitMetrics(registry or CollectorRegistry()),
        redis_timeout=timeout,
        clock=clock or Clock(),
    )


async def outcome(limiter: RateLimiter, key: str) -> Decision | RateLimited:
    try:
        return await limiter.check(key)
    except RateLimited as exc:
        return exc


def allowed_count(results: list[Decision | RateLimited]) -> int:
    return sum(isinstance(r, Decision) and r.allowed for r in results)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --- exact counts -----------------------------------------------------------------------


async def test_exactly_burst_allowed_then_limited(client: Redis) -> None:
    limiter = make_limiter(client, burst=5)  # one token per 1000 s: nothing refills here
    results = [await outcome(limiter, "ip:203.0.113.7") for _ in range(8)]
    decisions = [r for r in results if isinstance(r, Decision)]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert all(isinstance(r, RateLimited) for r in results[5:])
    limited = results[-1]
    assert isinstance(limited, RateLimited)
    assert limited.status == 429
    headers = dict(limited.headers)
    assert headers[b"retry-after"] == b"1000"
    assert headers[b"ratelimit-limit"] == b"5"
    assert headers[b"ratelimit-remaining"] == b"0"
    assert headers[b"ratelimit-reset"] == b"5000"


async def test_refills_by_the_time_elapsed(client: Redis) -> None:
    limiter = make_limiter(client, requests_per_second=20, burst=2)
    assert [isinstance(await outcome(limiter, "k"), Decision) for _ in range(2)] == [True, True]
    limited = await outcome(limiter, "k")
    assert isinstance(limited, RateLimited)
    assert 0 < limited.decision.retry_after_seconds <= 0.05
    await asyncio.sleep(limited.decision.retry_after_seconds + 0.02)
    assert isinstance(await outcome(limiter, "k"), Decision)


async def test_refill_uses_the_redis_server_clock(client: Redis, admin: redis.Redis) -> None:
    # The gateway's clock is frozen at zero and still the bucket refills: only Redis's
    # TIME counts, so gateways with skewed clocks agree.
    limiter = make_limiter(client, requests_per_second=20, burst=1, clock=Clock())
    assert isinstance(await outcome(limiter, "k"), Decision)
    assert isinstance(await outcome(limiter, "k"), RateLimited)
    await asyncio.sleep(0.07)
    assert isinstance(await outcome(limiter, "k"), Decision)
    seconds, micros = admin.time()
    stored = float(admin.hget(bucket_key("api", "k"), "ts") or 0)
    assert abs(stored - (seconds + micros / 1e6)) < 5


async def test_routes_and_keys_have_separate_buckets(client: Redis) -> None:
    api = make_limiter(client, route="api", burst=1)
    other = make_limiter(client, route="other", burst=1)
    assert isinstance(await outcome(api, "k"), Decision)
    assert isinstance(await outcome(api, "k"), RateLimited)
    assert isinstance(await outcome(api, "k2"), Decision)
    assert isinstance(await outcome(other, "k"), Decision)


# --- across workers, and at once --------------------------------------------------------


async def test_two_workers_share_one_bucket(redis_server: RedisServer, admin: redis.Redis) -> None:
    # Two limiters with their own connections and registries, as two gunicorn workers.
    first = connect_redis(redis_server.url, timeout=TIMEOUT)
    second = connect_redis(redis_server.url, timeout=TIMEOUT)
    registries = [CollectorRegistry(), CollectorRegistry()]
    try:
        workers = [
            make_limiter(first, registry=registries[0], burst=4),
            make_limiter(second, registry=registries[1], burst=4),
        ]
        results = [await outcome(workers[i % 2], "ip:203.0.113.7") for i in range(10)]
    finally:
        await first.aclose()
        await second.aclose()
    assert allowed_count(results) == 4
    assert [isinstance(r, Decision) for r in results] == [True] * 4 + [False] * 6
    allowed = [
        sample(r, "gateway_ratelimit_decisions_total", route="api", decision="allowed")
        for r in registries
    ]
    assert allowed == [2, 2]


async def test_fifty_concurrent_checks_take_exactly_burst_tokens(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    first = connect_redis(redis_server.url, timeout=TIMEOUT, max_connections=8)
    second = connect_redis(redis_server.url, timeout=TIMEOUT, max_connections=8)
    try:
        workers = [make_limiter(first, burst=10), make_limiter(second, burst=10)]
        results = await asyncio.gather(*(outcome(workers[i % 2], "sub:alice") for i in range(50)))
    finally:
        await first.aclose()
        await second.aclose()
    decisions = [r for r in results if isinstance(r, Decision)]
    assert len(decisions) == 10
    assert all(d.allowed and not d.degraded for d in decisions)
    # Each allowed check saw a different count: no two read the same bucket state.
    assert sorted(d.remaining for d in decisions) == list(range(10))
    assert sum(isinstance(r, RateLimited) for r in results) == 40


# --- what lands in Redis ----------------------------------------------------------------


def test_bucket_keys_are_namespaced_and_hashed() -> None:
    key = bucket_key("api", "sub:sk_live_SECRET")
    assert re.fullmatch(rf"{KEY_PREFIX}:api:[0-9a-f]{{32}}", key)
    assert "SECRET" not in key
    assert key != bucket_key("api", "sub:sk_live_SECRET2")
    assert key != bucket_key("other", "sub:sk_live_SECRET")


async def test_redis_holds_one_hashed_key_with_a_refill_ttl(
    client: Redis, admin: redis.Redis
) -> None:
    limiter = make_limiter(client, requests_per_second=0.001, burst=5)
    await limiter.check("sub:sk_live_SECRET")
    keys = admin.keys("*")
    assert keys == [bucket_key("api", "sub:sk_live_SECRET").encode()]
    stored = admin.hgetall(keys[0])
    assert set(stored) == {b"tokens", b"ts"}
    assert "SECRET" not in repr(keys) + repr(stored)
    assert float(stored[b"tokens"]) == pytest.approx(4.0)
    # One token short of full at 0.001 per second: 1000 s to refill, plus 1 s.
    assert 990_000 < admin.pttl(keys[0]) <= 1_001_000


async def test_the_script_is_loaded_again_after_a_script_flush(
    client: Redis, admin: redis.Redis
) -> None:
    sha = hashlib.sha1(TOKEN_BUCKET_SCRIPT.encode()).hexdigest()
    limiter = make_limiter(client, burst=3)
    await limiter.check("k")
    admin.script_flush()
    assert admin.script_exists(sha) == [False]
    assert (await limiter.check("k")).remaining == 1  # NOSCRIPT, loaded, run: one call
    assert admin.script_exists(sha) == [True]


def test_a_missing_redis_server_fails_the_tests_with_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        redis_server_binary()


# --- when Redis fails -------------------------------------------------------------------


async def check_timed(limiter: RateLimiter, key: str) -> tuple[Decision | Exception, float]:
    started = time.perf_counter()
    try:
        result: Decision | Exception = await limiter.check(key)
    except (RateLimited, RateLimiterUnavailable) as exc:
        result = exc
    return result, time.perf_counter() - started


def assert_policy_applied(
    result: Decision | Exception, policy: str, registry: CollectorRegistry, errors: int
) -> None:
    if policy == "allow":
        assert isinstance(result, Decision)
        assert result.allowed
        assert result.degraded
    else:
        assert isinstance(result, RateLimiterUnavailable)
        assert result.status == 503
    counted = sample(registry, "gateway_ratelimit_backend_errors_total", route="api", policy=policy)
    assert counted == errors


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_nothing_listening_follows_the_policy_at_once(policy: str) -> None:
    registry = CollectorRegistry()
    unreachable = connect_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=SHORT_TIMEOUT)
    try:
        limiter = make_limiter(
            unreachable, registry=registry, timeout=SHORT_TIMEOUT, on_backend_error=policy
        )
        result, elapsed = await check_timed(limiter, "k")
    finally:
        await unreachable.aclose()
    assert_policy_applied(result, policy, registry, errors=1)
    assert elapsed < SHORT_TIMEOUT + SLACK


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_a_stopped_server_follows_the_policy_within_the_timeout(
    policy: str, tmp_path: Path
) -> None:
    server = RedisServer(redis_server_binary(), tmp_path)
    server.start()
    registry = CollectorRegistry()
    connection = connect_redis(server.url, timeout=SHORT_TIMEOUT)
    try:
        limiter = make_limiter(
            connection, registry=registry, timeout=SHORT_TIMEOUT, on_backend_error=policy
        )
        assert not (await limiter.check("k")).degraded
        server.stop()
        result, elapsed = await check_timed(limiter, "k")
    finally:
        server.stop()
        await connection.aclose()
    assert_policy_applied(result, policy, registry, errors=1)
    assert elapsed < SHORT_TIMEOUT + SLACK


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_an_unresponsive_server_times_out_cools_down_and_recovers(
    policy: str, redis_server: RedisServer, admin: redis.Redis
) -> None:
    registry = CollectorRegistry()
    clock = Clock()
    connection = connect_redis(redis_server.url, timeout=SHORT_TIMEOUT)
    try:
        limiter = make_limiter(
            connection,
            registry=registry,
            timeout=SHORT_TIMEOUT,
            clock=clock,
            on_backend_error=policy,
            burst=3,
        )
        # Redis accepts the command and holds it: only our timeout ends the wait.
        admin.client_pause(5000, all=False)  # writes and scripts wait
        result, elapsed = await check_timed(limiter, "first")
        assert_policy_applied(result, policy, registry, errors=1)
        assert SHORT_TIMEOUT * 0.9 < elapsed < SHORT_TIMEOUT + SLACK

        # Within the cool-down, Redis is not asked at all: no wait.
        clock.now += 0.5
        result, elapsed = await check_timed(limiter, "first")
        assert_policy_applied(result, policy, registry, errors=2)
        assert elapsed < SHORT_TIMEOUT / 2

        # Back, and the cool-down over: real decisions again.
        admin.client_unpause()
        clock.now += 1.0
        decision = await limiter.check("second")
        assert not decision.degraded
        assert decision.remaining == 2
    finally:
        await connection.aclose()
