"""Authenticators built from policies, exercised the way the proxy calls them.

JWKS documents are served by an `httpx.MockTransport`; time for the key cache is a fake
clock, time for token claims is the real one with margins of several seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.apikeys import key_digest
from gateway.auth import (
    ANONYMOUS,
    Authenticator,
    Forbidden,
    Principal,
    Unauthorized,
    build_authenticator,
    principal_headers,
    strip_client_auth_headers,
)
from gateway.auth_policy import ApiKeyPolicy, JwtPolicy, NoAuthPolicy
from gateway.errors import GatewayError

ISSUER = "https://id.example"
AUDIENCE = "gateway"
SECRET = b"s3cret-s3cret-s3cret-s3cret-s3cret!"  # 35 bytes: HS256 wants at least 32
OTHER_SECRET = b"another-secret-another-secret-another"
ENVIRON = {"JWT_SECRET": SECRET.decode()}
JWKS_URL = "https://id.example/.well-known/jwks.json"


# --- keys, tokens and a key server ------------------------------------------------------


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, **extra}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, **extra}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def hs256(secret: bytes = SECRET, **changes: Any) -> str:
    return jwt.encode(claims(**changes), secret, algorithm="HS256")


def signed(key: Any, algorithm: str, kid: str | None, **changes: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def by_hand(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built without PyJWT, which refuses to make the dangerous ones."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"gw.example"), (b"authorization", f"Bearer {token}".encode())]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class KeyServer:
    """The identity provider's JWKS endpoint: counts fetches, can be down or held."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def handler(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URL
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"keys": self.keys})


@pytest.fixture
def key_server() -> KeyServer:
    return KeyServer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Build = Callable[..., Authenticator]


@pytest.fixture
async def build(key_server: KeyServer, clock: FakeClock) -> AsyncIterator[Build]:
    """`build(type="jwt", ...)`: an authenticator for that policy, closed after the test."""
    built: list[Authenticator] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(key_server.handler)) as http:

        def make(environ: dict[str, str] = ENVIRON, **policy: Any) -> Authenticator:
            context = {"environ": environ}
            if policy.get("type") == "jwt":
                policy = {"issuer": ISSUER, "audience": AUDIENCE, **policy}
                model: Any = JwtPolicy.model_validate(policy, context=context)
            elif policy.get("type") == "api_key":
                model = ApiKeyPolicy.model_validate(policy, context=context)
            else:
                model = NoAuthPolicy.model_validate(policy)
            authenticator = build_authenticator(model, http=http, clock=clock)
            built.append(authenticator)
            return authenticator

        yield make
        for authenticator in built:
            await authenticator.aclose()


@pytest.fixture
def hs_auth(build: Build) -> Authenticator:
    return build(type="jwt", hs256_secret_env="JWT_SECRET")


@pytest.fixture
def jwks_auth(
    build: Build, key_server: KeyServer, rsa_key: rsa.RSAPrivateKey, ec_key: Any
) -> Authenticator:
    key_server.keys = [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]
    return build(type="jwt", jwks_url=JWKS_URL)


async def refused(auth: Authenticator, headers: list[tuple[bytes, bytes]]) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        await auth.authenticate(headers)
    return caught.value


def challenge_of(error: GatewayError) -> str:
    [(name, value)] = error.headers
    assert name == b"www-authenticate"
    return value.decode()


# --- HS256 ------------------------------------------------------------------------------


async def test_a_valid_hs256_token_names_its_subject_and_scopes(hs_auth: Authenticator) -> None:
    principal = await hs_auth.authenticate(bearer(hs256(scope="orders:read orders:write")))
    assert principal == Principal("user-1", frozenset({"orders:read", "orders:write"}))


async def test_unauthorized_is_a_401_problem_with_a_bearer_challenge(
    hs_auth: Authenticator,
) -> None:
    error = await refused(hs_auth, bearer(hs256(exp=int(time.time()) - 3600)))
    assert isinstance(error, GatewayError)
    assert (error.status, error.slug) == (401, "unauthorized")
    assert error.detail == "the token has expired"
    assert challenge_of(error) == (
        'Bearer realm="gateway", error="invalid_token", error_description="the token has expired"'
    )


@pytest.mark.parametrize(
    ("changes", "description"),
    [
        ({"exp": -3600}, "the token has expired"),
        ({"nbf": 3600}, "the token is not valid yet"),
        ({"iat": 3600}, "the token is not valid yet"),
        ({"aud": "someone-else"}, "the token is not meant for this audience"),
        ({"aud": ["a", "b"]}, "the token is not meant for this audience"),
        ({"iss": "https://evil.example"}, "the token's issuer is not trusted here"),
        ({"exp": None}, "the token has no exp claim"),
        ({"sub": None}, "the token has no sub claim"),
        ({"iss": None}, "the token has no iss claim"),
        ({"aud": None}, "the token has no aud claim"),
        ({"sub": 42}, "the token is invalid"),
        ({"sub": "alice\r\nx-auth-subject: admin"}, "control characters"),
        ({"sub": ""}, "the token's sub claim is empty"),
        ({"scope": 7}, "the token's scope claim is malformed"),
        ({"scp": ["ok", 7]}, "the token's scp claim is malformed"),
        ({"scope": 'a"b'}, "the token's scopes hold characters a scope may not have"),
    ],
)
async def test_claims_are_checked(
    hs_auth: Authenticator, changes: dict[str, Any], description: str
) -> None:
    now = int(time.time())
    relative = {"exp", "nbf", "iat"}
    changes = {k: v + now if k in relative and v is not None else v for k, v in changes.items()}
    error = await refused(hs_auth, bearer(hs256(**changes)))
    assert description in error.detail
    assert 'error="invalid_token"' in challenge_of(error)


@pytest.mark.parametrize(
    ("claim", "offset", "accepted"),
    [
        # leeway_seconds: 30, with five seconds either side for a slow test machine
        ("exp", -25, True),
        ("exp", -35, False),
        ("nbf", 25, True),
        ("nbf", 35, False),
        ("iat", 25, True),
        ("iat", 35, False),
    ],
)
async def test_leeway_is_honoured_at_the_edges(
    build: Build, claim: str, offset: int, accepted: bool
) -> None:
    auth = build(type="jwt", hs256_secret_env="JWT_SECRET", leeway_seconds=30)
    changes: dict[str, Any] = {claim: int(time.time()) + offset}
    token = hs256(**changes)
    if accepted:
        assert (await auth.authenticate(bearer(token))).subject == "user-1"
    else:
        await refused(auth, bearer(token))


async def test_no_leeway_means_none(build: Build) -> None:
    auth = build(type="jwt", hs256_secret_env="JWT_SECRET", leeway_seconds=0)
    await refused(auth, bearer(hs256(exp=int(time.time()) - 2)))


async def test_an_audience_list_accepts_any_of_its_members(build: Build) -> None:
    auth = build(type="jwt", hs256_secret_env="JWT_SECRET", audience=["web", "gateway"])
    assert await auth.authenticate(bearer(hs256(aud="web")))
    assert await auth.authenticate(bearer(hs256(aud=["other", "gateway"])))
    await refused(auth, bearer(hs256(aud="other")))


async def test_a_bad_signature_is_refused(hs_auth: Authenticator) -> None:
    error = await refused(hs_auth, bearer(hs256(secret=OTHER_SECRET)))
    assert error.detail == "the token's signature does not verify"
    # A payload changed after signing: same header and signature, different claims.
    header, _, signature = hs256().split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    error = await refused(hs_auth, bearer(f"{header}.{forged}.{signature}"))
    assert error.detail == "the token's signature does not verify"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_always_refused(
    hs_auth: Authenticator, jwks_auth: Authenticator, alg: str
) -> None:
    token = by_hand({"alg": alg, "typ": "JWT"}, claims(), lambda _: b"")
    assert token.endswith(".")
    for auth in (hs_auth, jwks_auth):
        error = await refused(auth, bearer(token))
        assert error.detail == "unsigned tokens are not accepted"


async def test_an_hs256_route_refuses_asymmetric_algorithms(
    hs_auth: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    error = await refused(hs_auth, bearer(signed(rsa_key, "RS256", None)))
    assert error.detail == "the token's algorithm is not HS256, as its key requires"


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Bearer a b",
        b"Bearer not*a*token",
        b"Bearer abc",  # a b64token, but not a JWT
        b"Bearer a.b.c",
    ],
)
async def test_malformed_bearer_credentials_are_invalid_tokens(
    hs_auth: Authenticator, header: bytes
) -> None:
    error = await refused(hs_auth, [(b"authorization", header)])
    if header.strip():
        assert 'error="invalid_token"' in challenge_of(error)


def hs256_with_header(header: Any) -> str:
    return by_hand(header, claims(), lambda data: hmac.new(SECRET, data, hashlib.sha256).digest())


@pytest.mark.parametrize(
    ("header", "description"),
    [
        ({"alg": "HS256", "kid": 7}, "the token is malformed"),
        ([1, 2], "the token is malformed"),
        ("HS256", "the token is malformed"),
        ({"typ": "JWT"}, "unsigned tokens are not accepted"),
        ({"alg": "HS512"}, "the token's algorithm is not HS256, as its key requires"),
        ({"alg": "HS256", "crit": ["exp"], "exp": 1}, "the token is invalid"),
        ({"alg": "HS256", "b64": False, "crit": ["b64"]}, "the token is malformed"),
    ],
)
async def test_odd_headers_are_refused(
    hs_auth: Authenticator, header: Any, description: str
) -> None:
    error = await refused(hs_auth, bearer(hs256_with_header(header)))
    assert error.detail == description


async def test_a_well_formed_hand_made_token_is_accepted(hs_auth: Authenticator) -> None:
    """The helper above makes tokens PyJWT accepts, so the refusals are about the header."""
    token = hs256_with_header({"alg": "HS256", "typ": "JWT", "kid": "ignored"})
    assert (await hs_auth.authenticate(bearer(token))).subject == "user-1"


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Basic dXNlcjpwYXNz")],
        [(b"x-api-key", b"Bearer x")],
    ],
)
async def test_no_bearer_credentials_get_the_bare_challenge(
    hs_auth: Authenticator, headers: list[tuple[bytes, bytes]]
) -> None:
    error = await refused(hs_auth, headers)
    assert error.detail == "a bearer token is required"
    assert challenge_of(error) == 'Bearer realm="gateway"'


async def test_the_bearer_scheme_is_case_insensitive(hs_auth: Authenticator) -> None:
    headers = [(b"Authorization", f"bEaReR {hs256()}".encode())]
    assert (await hs_auth.authenticate(headers)).subject == "user-1"


async def test_two_authorization_headers_are_refused(hs_auth: Authenticator) -> None:
    error = await refused(hs_auth, bearer(hs256()) + bearer(hs256(sub="admin"))[1:])
    assert error.detail == "more than one Authorization header"


# --- RS256 / ES256 from a key set -------------------------------------------------------


async def test_rs256_and_es256_tokens_verify_against_the_key_set(
    jwks_auth: Authenticator, key_server: KeyServer, rsa_key: rsa.RSAPrivateKey, ec_key: Any
) -> None:
    rs = await jwks_auth.authenticate(bearer(signed(rsa_key, "RS256", "rsa-1", sub="r")))
    es = await jwks_auth.authenticate(bearer(signed(ec_key, "ES256", "ec-1", sub="e")))
    assert (rs.subject, es.subject) == ("r", "e")
    assert key_server.fetches == 1  # parsed once, then served from the cache


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    jwks_auth: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The classic key confusion: the public PEM used as an HMAC secret."""
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    token = by_hand(header, claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    error = await refused(jwks_auth, bearer(token))
    assert error.detail == "the token's algorithm is not RS256, as its key requires"


async def test_a_token_must_use_the_algorithm_of_its_kid(
    jwks_auth: Authenticator, rsa_key: rsa.RSAPrivateKey, ec_key: Any
) -> None:
    # Signed by the EC key but claiming the RSA kid, and the other way round.
    await refused(jwks_auth, bearer(signed(ec_key, "ES256", "rsa-1")))
    await refused(jwks_auth, bearer(signed(rsa_key, "RS256", "ec-1")))


async def test_a_route_limited_to_es256_ignores_rsa_keys(
    build: Build, key_server: KeyServer, rsa_key: rsa.RSAPrivateKey, ec_key: Any
) -> None:
    key_server.keys = [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]
    auth = build(type="jwt", jwks_url=JWKS_URL, algorithms=["ES256"])
    assert await auth.authenticate(bearer(signed(ec_key, "ES256", "ec-1")))
    error = await refused(auth, bearer(signed(rsa_key, "RS256", "rsa-1")))
    assert error.detail == "no key is known for this token's kid"


async def test_a_signature_by_a_key_not_in_the_set_is_refused(
    jwks_auth: Authenticator, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    error = await refused(jwks_auth, bearer(signed(rsa_key_2, "RS256", "rsa-1")))
    assert error.detail == "the token's signature does not verify"


async def test_an_unknown_kid_refreshes_once_within_the_minimum_interval(
    jwks_auth: Authenticator, key_server: KeyServer, rsa_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    await jwks_auth.authenticate(bearer(signed(rsa_key, "RS256", "rsa-1")))
    assert key_server.fetches == 1
    clock.advance(31)  # past jwks_min_refresh_seconds (30) since that first fetch
    error = await refused(jwks_auth, bearer(signed(rsa_key, "RS256", "unknown-1")))
    assert error.detail == "no key is known for this token's kid"
    assert key_server.fetches == 2
    clock.advance(29)
    await refused(jwks_auth, bearer(signed(rsa_key, "RS256", "unknown-2")))
    await refused(jwks_auth, bearer(signed(rsa_key, "RS256", "unknown-1")))
    assert key_server.fetches == 2  # rate limited: made-up kids cannot flood the provider
    clock.advance(1)
    await refused(jwks_auth, bearer(signed(rsa_key, "RS256", "unknown-2")))
    assert key_server.fetches == 3


async def test_key_rotation(
    build: Build,
    key_server: KeyServer,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key_2: rsa.RSAPrivateKey,
    clock: FakeClock,
) -> None:
    key_server.keys = [rsa_jwk(rsa_key, "2024")]
    auth = build(type="jwt", jwks_url=JWKS_URL)
    old_token = bearer(signed(rsa_key, "RS256", "2024"))
    new_token = bearer(signed(rsa_key_2, "RS256", "2025"))
    assert await auth.authenticate(old_token)

    # The provider rotates: the new key is published, the old one withdrawn.
    key_server.keys = [rsa_jwk(rsa_key_2, "2025")]
    clock.advance(30)
    assert (await auth.authenticate(new_token)).subject == "user-1"  # found by the refresh
    assert key_server.fetches == 2
    error = await refused(auth, old_token)
    assert error.detail == "no key is known for this token's kid"
    assert key_server.fetches == 2


async def test_concurrent_requests_with_an_unknown_kid_share_one_fetch(
    jwks_auth: Authenticator, key_server: KeyServer, rsa_key_2: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    assert key_server.fetches == 0  # every request below starts from an empty cache
    key_server.keys.append(rsa_jwk(rsa_key_2, "rsa-2"))
    key_server.gate = asyncio.Event()
    token = bearer(signed(rsa_key_2, "RS256", "rsa-2"))
    requests = [asyncio.create_task(jwks_auth.authenticate(token)) for _ in range(20)]
    await asyncio.sleep(0.01)
    key_server.gate.set()
    principals = await asyncio.gather(*requests)
    assert {p.subject for p in principals} == {"user-1"}
    assert key_server.fetches == 1

    clock.advance(60)
    newer = bearer(signed(rsa_key_2, "RS256", "rsa-3"))
    key_server.keys.append(rsa_jwk(rsa_key_2, "rsa-3"))
    key_server.gate = asyncio.Event()
    requests = [asyncio.create_task(jwks_auth.authenticate(newer)) for _ in range(20)]
    await asyncio.sleep(0.01)
    key_server.gate.set()
    assert len(await asyncio.gather(*requests)) == 20
    assert key_server.fetches == 2


async def test_a_request_that_goes_away_does_not_cancel_the_shared_fetch(
    jwks_auth: Authenticator, key_server: KeyServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.gate = asyncio.Event()
    token = bearer(signed(rsa_key, "RS256", "rsa-1"))
    first = asyncio.create_task(jwks_auth.authenticate(token))
    second = asyncio.create_task(jwks_auth.authenticate(token))
    await asyncio.sleep(0.01)
    first.cancel()
    key_server.gate.set()
    assert (await second).subject == "user-1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert key_server.fetches == 1


async def test_a_key_server_that_is_down_means_401_not_an_exception(
    jwks_auth: Authenticator, key_server: KeyServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.down = True
    error = await refused(jwks_auth, bearer(signed(rsa_key, "RS256", "rsa-1")))
    assert error.detail == "no key is known for this token's kid"


async def test_a_failed_refresh_keeps_serving_the_cached_keys(
    jwks_auth: Authenticator, key_server: KeyServer, rsa_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    token = bearer(signed(rsa_key, "RS256", "rsa-1"))
    await jwks_auth.authenticate(token)
    key_server.down = True
    clock.advance(301)  # past jwks_cache_seconds: a background refresh starts, and fails
    assert await jwks_auth.authenticate(token)
    await asyncio.sleep(0.01)
    assert key_server.fetches == 2
    assert await jwks_auth.authenticate(token)
    # An unknown kid still gets a clean 401 while the provider is down.
    clock.advance(31)
    await refused(jwks_auth, bearer(signed(rsa_key, "RS256", "new")))


async def test_start_warms_the_key_set_and_survives_a_provider_that_is_down(
    jwks_auth: Authenticator, key_server: KeyServer
) -> None:
    key_server.down = True
    await jwks_auth.start()
    assert key_server.fetches == 1


# --- scopes -----------------------------------------------------------------------------


async def test_a_missing_scope_is_403_with_an_insufficient_scope_challenge(
    build: Build,
) -> None:
    auth = build(
        type="jwt", hs256_secret_env="JWT_SECRET", required_scopes=["orders:read", "orders:write"]
    )
    with pytest.raises(Forbidden) as caught:
        await auth.authenticate(bearer(hs256(scope="orders:read profile")))
    error = caught.value
    assert (error.status, error.slug) == (403, "insufficient-scope")
    assert challenge_of(error) == (
        'Bearer realm="gateway", error="insufficient_scope", '
        'error_description="the token lacks the scope orders:write", '
        'scope="orders:read orders:write"'
    )


@pytest.mark.parametrize(
    "scope_claims",
    [
        {"scope": "orders:write orders:read"},
        {"scp": ["orders:read", "orders:write"]},
        {"scp": "orders:read orders:write"},
        {"scope": "orders:read", "scp": ["orders:write"]},
        {"scope": "  orders:read   orders:write "},
    ],
)
async def test_scopes_come_from_scope_and_scp(build: Build, scope_claims: dict[str, Any]) -> None:
    auth = build(
        type="jwt", hs256_secret_env="JWT_SECRET", required_scopes=["orders:read", "orders:write"]
    )
    principal = await auth.authenticate(bearer(hs256(**scope_claims)))
    assert principal.scopes == {"orders:read", "orders:write"}


async def test_a_token_without_scopes_has_none(hs_auth: Authenticator) -> None:
    assert (await hs_auth.authenticate(bearer(hs256()))).scopes == frozenset()


# --- API keys ---------------------------------------------------------------------------


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(
        "# issued 2025-01\n"
        f"ci-bot:{key_digest(b'ci-secret-key')}\n"
        "\n"
        f"{key_digest(b'anonymous-key').upper()}   # no name\n"
        f"ci-bot:{key_digest(b'ci-rotated-key')}\n",
        encoding="utf-8",
    )
    return path


async def test_api_keys_from_a_file_with_names_and_comments(build: Build, keys_file: Path) -> None:
    auth = build(type="api_key", keys_file=str(keys_file))
    assert await auth.authenticate([(b"x-api-key", b"ci-secret-key")]) == Principal("ci-bot")
    assert (await auth.authenticate([(b"x-api-key", b"ci-rotated-key")])).subject == "ci-bot"
    unnamed = await auth.authenticate([(b"X-API-Key", b"anonymous-key")])
    assert unnamed.subject == f"api-key:{key_digest(b'anonymous-key')[:8]}"


async def test_api_keys_from_the_environment(build: Build) -> None:
    environ = {"KEYS": f"a:{key_digest(b'key-a')},b:{key_digest(b'key-b')}"}
    auth = build(environ=environ, type="api_key", keys_env="KEYS", header="X-Key")
    assert (await auth.authenticate([(b"x-key", b"key-b")])).subject == "b"


@pytest.mark.parametrize(
    ("headers", "detail", "error_param"),
    [
        ([], "an API key is required in X-API-Key", False),
        (
            [(b"authorization", b"Bearer ci-secret-key")],
            "an API key is required in X-API-Key",
            False,
        ),
        ([(b"x-api-key", b"wrong")], "the API key is not valid", True),
        ([(b"x-api-key", b"")], "the API key is not valid", True),
        ([(b"x-api-key", b"ci-secret-key ")], "the API key is not valid", True),
        ([(b"x-api-key", b"CI-SECRET-KEY")], "the API key is not valid", True),
        (
            [(b"x-api-key", b"ci-secret-key"), (b"x-api-key", b"wrong")],
            "more than one X-API-Key header",
            True,
        ),
    ],
)
async def test_wrong_or_missing_api_keys_are_401(
    build: Build,
    keys_file: Path,
    headers: list[tuple[bytes, bytes]],
    detail: str,
    error_param: bool,
) -> None:
    auth = build(type="api_key", keys_file=str(keys_file))
    error = await refused(auth, headers)
    assert error.detail == detail
    challenge = challenge_of(error)
    assert challenge.startswith('ApiKey realm="gateway", header="X-API-Key"')
    assert ('error="invalid_key"' in challenge) is error_param
    assert b"ci-secret-key" not in repr(error).encode() + b"".join(v for _, v in error.headers)


async def test_every_stored_digest_is_compared_every_time(
    build: Build, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = build(type="api_key", keys_file=str(keys_file))
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for key in (b"ci-secret-key", b"ci-rotated-key", b"wrong"):
        calls.clear()
        with pytest.raises(Unauthorized) if key == b"wrong" else contextlib.nullcontext():
            await auth.authenticate([(b"x-api-key", key)])
        assert len(calls) == 3  # three stored keys, whichever matched (or none)
        assert all(a == hashlib.sha256(key).digest() for a, _ in calls)


# --- no auth ----------------------------------------------------------------------------


async def test_none_lets_everyone_through_anonymously(build: Build) -> None:
    auth = build(type="none")
    assert await auth.authenticate([]) is ANONYMOUS
    assert auth.drop_headers == frozenset()
    assert principal_headers(ANONYMOUS) == []


# --- headers towards the upstream -------------------------------------------------------


def test_client_x_auth_headers_are_stripped_whatever_their_case() -> None:
    headers = [
        (b"accept", b"*/*"),
        (b"x-auth-subject", b"admin"),
        (b"X-Auth-Scopes", b"admin:all"),
        (b"X-AUTH-ANYTHING", b"1"),
        (b"x_auth_subject", b"admin"),  # read as X-Auth-Subject by CGI-style servers
        (b"X-Auth_Scopes", b"admin:all"),
        (b"x-authorization", b"kept"),  # not in the X-Auth- namespace
        (b"authorization", b"Bearer t"),
    ]
    assert strip_client_auth_headers(headers) == [
        (b"accept", b"*/*"),
        (b"x-authorization", b"kept"),
        (b"authorization", b"Bearer t"),
    ]


def test_connection_cannot_name_the_gateways_own_headers() -> None:
    headers = [
        (b"connection", b"keep-alive, X-Auth-Subject,x-auth-scopes"),
        (b"connection", b"x-auth-subject"),
    ]
    assert strip_client_auth_headers(headers) == [(b"connection", b"keep-alive")]


async def test_credentials_are_dropped_unless_forwarding_is_configured(
    build: Build, keys_file: Path
) -> None:
    headers = [(b"authorization", b"Bearer t"), (b"x-api-key", b"k"), (b"accept", b"*/*")]
    cases: dict[str, tuple[dict[str, Any], list[bytes]]] = {
        "jwt": ({"type": "jwt", "hs256_secret_env": "JWT_SECRET"}, [b"x-api-key", b"accept"]),
        "jwt-forward": (
            {"type": "jwt", "hs256_secret_env": "JWT_SECRET", "forward_authorization": True},
            [b"authorization", b"x-api-key", b"accept"],
        ),
        "api_key": (
            {"type": "api_key", "keys_file": str(keys_file)},
            [b"authorization", b"accept"],
        ),
        "api_key-forward": (
            {"type": "api_key", "keys_file": str(keys_file), "forward_authorization": True},
            [b"authorization", b"x-api-key", b"accept"],
        ),
        "none": ({"type": "none"}, [b"authorization", b"x-api-key", b"accept"]),
    }
    for name, (policy, kept) in cases.items():
        auth = build(**policy)
        out = strip_client_auth_headers(headers, drop=auth.drop_headers)
        assert [n for n, _ in out] == kept, name


def test_principal_headers_name_the_subject_and_sorted_scopes() -> None:
    principal = Principal("user-1", frozenset({"b", "a", "c:d"}))
    assert principal_headers(principal) == [
        (b"x-auth-subject", b"user-1"),
        (b"x-auth-scopes", b"a b c:d"),
    ]
    assert principal_headers(Principal("ci-bot")) == [
        (b"x-auth-subject", b"ci-bot"),
        (b"x-auth-scopes", b""),
    ]
    assert principal_headers(Principal("jos\u00e9"))[0] == (b"x-auth-subject", "jos\u00e9".encode())


async def test_a_spoofed_subject_never_survives_to_the_upstream(hs_auth: Authenticator) -> None:
    """What the proxy does per request, end to end."""
    client = [*bearer(hs256(sub="user-1")), (b"x-auth-subject", b"admin")]
    principal = await hs_auth.authenticate(client)
    upstream = strip_client_auth_headers(client, drop=hs_auth.drop_headers)
    upstream += principal_headers(principal)
    assert [v for n, v in upstream if n == b"x-auth-subject"] == [b"user-1"]
    assert all(n != b"authorization" for n, _ in upstream)


header_names = st.text(
    alphabet=st.sampled_from("xX-_aAuUtThH" + "sbjcope"), min_size=1, max_size=20
).map(str.encode)


@given(st.lists(st.tuples(header_names, st.binary(max_size=10)), max_size=8))
def test_stripping_leaves_no_x_auth_header_in_any_spelling(
    headers: list[tuple[bytes, bytes]],
) -> None:
    out = strip_client_auth_headers(headers)
    assert not any(n.lower().replace(b"_", b"-").startswith(b"x-auth-") for n, _ in out)
    # ...and removes nothing else (the alphabet cannot spell `connection`).
    assert out == [
        h for h in headers if not h[0].lower().replace(b"_", b"-").startswith(b"x-auth-")
    ]
