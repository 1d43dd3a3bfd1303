from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm

from gateway.jwks import MAX_JWKS_BYTES, JwksCache, KeySet, UnusableKey, key_from_jwk, parse_jwks

URL = "https://id.example/jwks"
BOTH = frozenset({"RS256", "ES256"})


@pytest.fixture(scope="session")
def rsa_jwk() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "rsa"}


@pytest.fixture(scope="session")
def ec_jwk() -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "ec"}


# --- parsing ----------------------------------------------------------------------------


def test_each_key_is_bound_to_the_algorithm_of_its_type(
    rsa_jwk: dict[str, Any], ec_jwk: dict[str, Any]
) -> None:
    assert key_from_jwk(rsa_jwk, BOTH).algorithm == "RS256"
    assert key_from_jwk(ec_jwk, BOTH).algorithm == "ES256"
    assert key_from_jwk({**rsa_jwk, "alg": "RS256", "use": "sig"}, BOTH).kid == "rsa"
    assert key_from_jwk({**ec_jwk, "key_ops": ["verify"]}, BOTH).kid == "ec"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"alg": "HS256"}, "its alg 'HS256' is not RS256"),
        ({"alg": "PS256"}, "its alg 'PS256' is not RS256"),
        ({"alg": "none"}, "its alg 'none' is not RS256"),
        ({"use": "enc"}, "its use is 'enc'"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"kid": 7}, "kid is not a string"),
        ({"d": "AQAB"}, "private key material"),
        ({"n": 12}, "does not parse"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "private key material"),
        ({"kty": "OKP", "crv": "Ed25519"}, "is not RSA or EC P-256"),
    ],
)
def test_unusable_rsa_keys_are_refused(
    rsa_jwk: dict[str, Any], change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UnusableKey, match=reason):
        key_from_jwk({**rsa_jwk, **change}, BOTH)


def test_a_short_rsa_key_is_refused() -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(UnusableKey, match="1024 bits, under 2048"):
        key_from_jwk(RSAAlgorithm.to_jwk(short, as_dict=True), BOTH)


def test_an_ec_key_on_another_curve_is_refused(ec_jwk: dict[str, Any]) -> None:
    p384 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    with pytest.raises(UnusableKey, match="crv 'P-384'"):
        key_from_jwk(p384, BOTH)
    with pytest.raises(UnusableKey, match="its alg 'ES384' is not ES256"):
        key_from_jwk({**ec_jwk, "alg": "ES384"}, BOTH)


def test_a_symmetric_key_in_a_key_set_is_never_used() -> None:
    oct_jwk: dict[str, Any] = HMACAlgorithm.to_jwk(b"x" * 32, as_dict=True)
    with pytest.raises(UnusableKey):
        key_from_jwk(oct_jwk, BOTH | {"HS256"})


def test_keys_outside_the_routes_algorithms_are_refused(rsa_jwk: dict[str, Any]) -> None:
    with pytest.raises(UnusableKey, match="not among this route's algorithms"):
        key_from_jwk(rsa_jwk, {"ES256"})


def test_a_key_set_keeps_the_usable_keys_and_logs_the_rest(
    rsa_jwk: dict[str, Any], ec_jwk: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    document = {
        "keys": [rsa_jwk, {**ec_jwk, "use": "enc"}, "junk", {**rsa_jwk}, {**ec_jwk, "kid": "ec2"}]
    }
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        keys = parse_jwks(document, BOTH)
    assert sorted(keys.by_kid) == ["ec2", "rsa"]
    reasons = [getattr(r, "reason", "") for r in caplog.records]
    assert any("'enc'" in r for r in reasons)
    assert any("appears twice" in r for r in reasons)
    assert any("not an object" in r for r in reasons)


@pytest.mark.parametrize("document", [[], {}, {"keys": {}}, "keys", None])
def test_a_document_that_is_not_a_key_set_is_an_error(document: Any) -> None:
    with pytest.raises(ValueError, match="not a JWK set"):
        parse_jwks(document, BOTH)


def test_a_token_without_kid_matches_only_a_single_key(
    rsa_jwk: dict[str, Any], ec_jwk: dict[str, Any]
) -> None:
    one = parse_jwks({"keys": [rsa_jwk]}, BOTH)
    assert one.find(None) is not None
    two = parse_jwks({"keys": [rsa_jwk, ec_jwk]}, BOTH)
    assert two.find(None) is None
    assert two.find("ec") is not None
    assert KeySet().find("rsa") is None


# --- the cache --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Respond = Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]
CacheFactory = Callable[..., JwksCache]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cache(clock: Clock) -> AsyncIterator[CacheFactory]:
    """`cache(respond, **options)`: a JwksCache whose fetches go to `respond`."""
    clients: list[httpx.AsyncClient] = []
    caches: list[JwksCache] = []

    def make(respond: Respond, **options: Any) -> JwksCache:
        client = httpx.AsyncClient(transport=httpx.MockTransport(respond))
        clients.append(client)
        options = {"algorithms": BOTH, "clock": clock, **options}
        caches.append(JwksCache(URL, client, **options))
        return caches[-1]

    yield make
    for c in caches:
        await c.aclose()
    for client in clients:
        await client.aclose()


def serving(*documents: Any) -> Respond:
    """Answers with each document in turn, repeating the last."""
    queue = list(documents)

    async def respond(request: httpx.Request) -> httpx.Response:
        document = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(document, httpx.Response):
            return document
        return httpx.Response(200, json=document)

    return respond


async def test_a_stale_set_is_served_while_a_background_refresh_runs(
    cache: CacheFactory, clock: Clock, rsa_jwk: dict[str, Any], ec_jwk: dict[str, Any]
) -> None:
    jwks = cache(serving({"keys": [rsa_jwk]}, {"keys": [ec_jwk]}), cache_seconds=300)
    assert await jwks.get("rsa") is not None
    clock.now = 299
    assert await jwks.get("rsa") is not None
    assert jwks.fetches == 1
    clock.now = 300
    assert await jwks.get("rsa") is not None  # served at once...
    await asyncio.sleep(0.01)  # ...while the refresh replaces the set
    assert jwks.fetches == 2
    assert sorted(jwks.keys.by_kid) == ["ec"]
    clock.now = 400
    assert await jwks.get("rsa") is None  # withdrawn; a refresh is allowed, and agrees
    assert jwks.fetches == 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"keys": []}),
        httpx.Response(302, headers={"location": "https://evil.example/jwks"}),
        httpx.Response(200, content=b"not json"),
        httpx.Response(200, content=b"[" * 100_000),
        httpx.Response(200, json={"no": "keys"}),
        httpx.Response(200, content=b'{"keys": [' + b" " * MAX_JWKS_BYTES + b"]}"),
    ],
)
async def test_a_bad_answer_keeps_the_cached_keys(
    cache: CacheFactory,
    clock: Clock,
    rsa_jwk: dict[str, Any],
    answer: httpx.Response,
    caplog: pytest.LogCaptureFixture,
) -> None:
    jwks = cache(serving({"keys": [rsa_jwk]}, answer))
    assert await jwks.get("rsa") is not None
    clock.now = 1000
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        await jwks.refresh()
    assert (jwks.fetches, jwks.failures) == (2, 1)
    assert await jwks.get("rsa") is not None
    assert "keeping the keys cached before" in caplog.text


async def test_a_hanging_key_server_times_out(cache: CacheFactory) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    jwks = cache(hang, fetch_timeout=0.05)
    assert await jwks.get("rsa") is None
    assert jwks.failures == 1


async def test_refresh_is_rate_limited_and_coalesced(
    cache: CacheFactory, clock: Clock, rsa_jwk: dict[str, Any]
) -> None:
    gate = asyncio.Event()

    async def respond(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200, json={"keys": [rsa_jwk]})

    jwks = cache(respond, min_refresh_seconds=30)
    waiting = [asyncio.create_task(jwks.refresh()) for _ in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*waiting)
    assert jwks.fetches == 1
    clock.now = 29.9
    await jwks.refresh()
    assert await jwks.get("other") is None
    assert jwks.fetches == 1
    clock.now = 30
    await jwks.refresh()
    assert jwks.fetches == 2


async def test_aclose_cancels_a_fetch_in_flight(cache: CacheFactory) -> None:
    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    jwks = cache(hang)
    waiting = asyncio.create_task(jwks.refresh())
    await started.wait()
    await jwks.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiting
