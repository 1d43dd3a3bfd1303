"""JSON Web Key Sets: fetched off the hot path, parsed once, refreshed with restraint.

Each key is parsed into a `VerificationKey` bound to exactly one algorithm, derived from
the key itself: RSA -> RS256, EC on P-256 -> ES256. A JWK whose own `alg` says anything
else, that is not for signatures (`use`, `key_ops`), that carries private material, or
whose RSA modulus is under 2048 bits is skipped (and logged), never guessed at.

`JwksCache` keeps the last good set and decides when to fetch again:

- a set older than `cache_seconds` is still served while one refresh runs in the
  background, so requests never wait for the identity provider on a schedule;
- a token naming an unknown `kid` waits for a refresh (that is how a rotated-in key is
  found), but fetches start at most once per `min_refresh_seconds`, so a flood of
  tokens with made-up kids costs the identity provider one request per interval;
- concurrent callers share one in-flight fetch;
- a failed fetch (unreachable, not 200, not a key set, too large) keeps the old keys and
  is logged; callers then simply find no key, which the caller turns into a 401.

Fetches go through the `httpx.AsyncClient` given, never through the upstream client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWTError
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

logger = logging.getLogger("gateway.auth")

PublicKey = RSAPublicKey | EllipticCurvePublicKey
KeyMaterial = bytes | PublicKey

# A key set is a few kilobytes; anything much larger is not one.
MAX_JWKS_BYTES = 256 * 1024
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A parsed key and the one algorithm it may verify."""

    kid: str | None
    algorithm: str
    key: KeyMaterial = field(repr=False)


class UnusableKey(ValueError):
    """This JWK cannot verify anything here; the message says why."""


def key_from_jwk(jwk: Mapping[str, Any], algorithms: Collection[str]) -> VerificationKey:
    """The verification key for one JWK, limited to `algorithms`; UnusableKey if none."""
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise UnusableKey("its kid is not a string")
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise UnusableKey("it holds private key material; a key set must publish public keys")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise UnusableKey(f"its use is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise UnusableKey("its key_ops do not include 'verify'")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        algorithm = "RS256"
    elif kty == "EC" and crv == "P-256":
        algorithm = "ES256"
    else:
        raise UnusableKey(f"kty {kty!r} (crv {crv!r}) is not RSA or EC P-256")
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        raise UnusableKey(f"its alg {declared!r} is not {algorithm}, the one its type allows")
    if algorithm not in algorithms:
        raise UnusableKey(f"{algorithm} is not among this route's algorithms")
    key = _public_key(dict(jwk), algorithm)
    return VerificationKey(kid, algorithm, key)


def _public_key(jwk: dict[str, Any], algorithm: str) -> PublicKey:
    try:
        key = RSAAlgorithm.from_jwk(jwk) if algorithm == "RS256" else ECAlgorithm.from_jwk(jwk)
    except (PyJWTError, ValueError, TypeError) as exc:
        raise UnusableKey(f"it does not parse: {exc}") from None
    if isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise UnusableKey(f"its RSA modulus is {key.key_size} bits, under {MIN_RSA_BITS}")
        return key
    if isinstance(key, EllipticCurvePublicKey) and isinstance(key.curve, SECP256R1):
        return key
    raise UnusableKey("it is not a public key of its declared type")


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable keys of one fetched document."""

    keys: tuple[VerificationKey, ...] = ()
    by_kid: Mapping[str, VerificationKey] = field(default_factory=dict)

    def find(self, kid: str | None) -> VerificationKey | None:
        """The key for `kid`; a token without a kid works only against a one-key set."""
        if kid is None:
            return self.keys[0] if len(self.keys) == 1 else None
        return self.by_kid.get(kid)


def parse_jwks(document: Any, algorithms: Collection[str], *, source: str = "JWKS") -> KeySet:
    """The usable keys of a JWKS document; ValueError if it is not a key set at all."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set: no 'keys' list")
    keys: list[VerificationKey] = []
    by_kid: dict[str, VerificationKey] = {}
    for index, jwk in enumerate(document["keys"]):
        try:
            if not isinstance(jwk, dict):
                raise UnusableKey("it is not an object")
            key = key_from_jwk(jwk, algorithms)
            if key.kid is not None and key.kid in by_kid:
                raise UnusableKey(f"kid {key.kid!r} appears twice; the first one is kept")
        except UnusableKey as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            logger.warning(
                "skipping a key in the key set",
                extra={"jwks": source, "index": index, "kid": str(kid), "reason": str(exc)},
            )
            continue
        keys.append(key)
        if key.kid is not None:
            by_kid[key.kid] = key
    return KeySet(tuple(keys), by_kid)


class JwksCache:
    """The keys at one JWKS URL, for one event loop (one gunicorn worker)."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        algorithms: Collection[str],
        cache_seconds: float = 300.0,
        min_refresh_seconds: float = 30.0,
        fetch_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._http = http
        self._algorithms = frozenset(algorithms)
        self._cache_seconds = cache_seconds
        self._min_refresh = min_refresh_seconds
        self._timeout = fetch_timeout
        self._clock = clock
        self._keys = KeySet()
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch started, for the rate limit
        self._inflight: asyncio.Task[None] | None = None
        # Counters for tests and metrics: fetches started, and those that failed.
        self.fetches = 0
        self.failures = 0

    @property
    def keys(self) -> KeySet:
        return self._keys

    async def get(self, kid: str | None) -> VerificationKey | None:
        """The key for `kid`, fetching first if it is unknown and the rate limit allows."""
        key = self._keys.find(kid)
        if key is None:
            if kid is not None or self._fetched_at is None:
                await self.refresh()
                key = self._keys.find(kid)
        elif self._stale():
            self._start_refresh()  # serve the cached key; the new set arrives meanwhile
        return key

    async def refresh(self) -> None:
        """Fetch now unless a fetch started under `min_refresh_seconds` ago; join one running."""
        task = self._start_refresh()
        if task is not None:
            # Shielded: a caller that goes away must not cancel everyone's fetch.
            await asyncio.shield(task)

    async def aclose(self) -> None:
        """Cancel a fetch still running (at shutdown)."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._cache_seconds

    def _start_refresh(self) -> asyncio.Task[None] | None:
        if self._inflight is not None:
            return self._inflight
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self._min_refresh:
            return None
        self._attempted_at = now
        task = asyncio.create_task(self._fetch(), name=f"jwks-fetch {self.url}")
        self._inflight = task
        task.add_done_callback(self._fetch_done)
        return task

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("JWKS fetch crashed", exc_info=exc, extra={"jwks_url": self.url})

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            async with asyncio.timeout(self._timeout):
                document = await self._download()
            keys = parse_jwks(document, self._algorithms, source=self.url)
        except (httpx.HTTPError, TimeoutError, ValueError, RecursionError) as exc:
            self.failures += 1
            logger.warning(
                "JWKS fetch failed; keeping the keys cached before",
                extra={
                    "jwks_url": self.url,
                    "reason": str(exc) or type(exc).__name__,
                    "cached_keys": len(self._keys.keys),
                },
            )
            return
        before = set(self._keys.by_kid)
        self._keys = keys
        self._fetched_at = self._clock()
        if set(keys.by_kid) != before:
            logger.info(
                "JWKS keys changed",
                extra={"jwks_url": self.url, "kids": sorted(keys.by_kid), "keys": len(keys.keys)},
            )

    async def _download(self) -> Any:
        headers = {"accept": "application/jwk-set+json, application/json"}
        # Redirects are not followed: the configured URL is the one trusted for keys.
        async with self._http.stream(
            "GET", self.url, headers=headers, follow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise ValueError(f"the JWKS URL answered {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)
