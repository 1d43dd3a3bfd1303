"""Token buckets in Redis: the `redis` rate-limit backend, one limit for every worker.

All workers and replicas share each bucket, so a route's limit holds however many
processes serve it. One Lua script does the whole check on the server, atomically:
read the bucket, refill it for the time elapsed by the Redis server's clock (`TIME`, so
gateways with skewed clocks still agree), take a token if there is one, write the
bucket back with a TTL of about the time it takes to fill up again (a full bucket and
a missing one are the same, so idle clients cost Redis nothing), and answer.
redis-py sends it with EVALSHA and loads it again if the server answers NOSCRIPT (after
a restart or SCRIPT FLUSH).

Keys are `gateway:rl:<route>:<sha256 of the client key, 32 hex digits>`: the client key
may be an API key's subject or an address, and none of it is stored in clear. Each
bucket is a hash with fields `tokens` and `ts` (server seconds). Needs Redis >= 5.

Failure is bounded: each check gives up after `timeout` (keep it short: the request
waits for it) and raises `BackendUnavailable`, for the caller's `on_backend_error`
policy. After a failure the backend does not ask Redis again for `error_cooldown`
seconds, so an outage costs one timeout per second per route and worker, not one per
request. The first failure and the recovery are each logged once. A check that timed
out may still run once Redis catches up and take its token: errs towards limiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.ratelimit_bucket import EPSILON, BackendUnavailable, Decision

logger = logging.getLogger("gateway.ratelimit")

KEY_PREFIX = "gateway:rl"

# Mirrors `ratelimit_bucket.refill_and_take`. Numbers go back as strings: Redis would
# truncate a Lua number to an integer.
TOKEN_BUCKET_SCRIPT = f"""
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 - {EPSILON!r} then
  allowed = 1
  tokens = math.max(0, tokens - 1)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {{allowed, string.format('%.17g', tokens)}}
"""


def bucket_key(route: str, key: str) -> str:
    """The Redis key of `route`'s bucket for client `key`; the key itself is not in it."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"{KEY_PREFIX}:{route}:{digest}"


def connect_redis(url: str, *, timeout: float, max_connections: int = 64) -> Redis:
    """A client for rate limiting: short timeouts, at most one immediate retry.

    Build it once per worker, in the lifespan (after the fork), and `await
    client.aclose()` on shutdown. Creating it connects to nothing: a Redis that is down
    at start-up only shows in the first checks. redis-py's default of ten retries with
    backoff would hold a request far longer than a rate limit is worth; one retry
    without backoff still gets past a pooled connection that Redis closed. Past
    `max_connections` concurrent checks, the next waits for a free connection, within
    the same `timeout`.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)


class RedisBackend:
    """`route`'s buckets in Redis, refilled at `rate` tokens per second up to `capacity`."""

    def __init__(
        self,
        client: Redis,
        *,
        route: str,
        rate: float,
        capacity: int,
        timeout: float,
        error_cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.route = route
        self.rate = rate
        self.capacity = capacity
        self.timeout = timeout
        self.error_cooldown = error_cooldown
        self._clock = clock
        self._script = client.register_script(TOKEN_BUCKET_SCRIPT)
        self._down_until: float | None = None  # set while in the cool-down after a failure

    async def take(self, key: str) -> Decision:
        if self._down_until is not None and self._clock() < self._down_until:
            raise BackendUnavailable("redis failed moments ago; not asking it again yet")
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._script(
                    keys=[bucket_key(self.route, key)], args=[self.rate, self.capacity]
                )
            allowed, tokens = int(reply[0]), float(reply[1])
        except (RedisError, OSError, TimeoutError, ValueError, TypeError, IndexError) as exc:
            self._failed(exc)
            raise BackendUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        if self._down_until is not None:
            self._down_until = None
            logger.warning("rate-limit backend redis is back", extra={"route": self.route})
        return Decision.of(allowed == 1, tokens, rate=self.rate, capacity=self.capacity)

    def _failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            logger.warning(
                "rate-limit backend redis failed; on_backend_error decides until it is back",
                extra={"route": self.route, "reason": f"{type(exc).__name__}: {exc}"},
            )
        self._down_until = self._clock() + self.error_cooldown
