"""JWT auth: /jwt (HS256, a secret from the environment, needs orders:read) and /jwks
(RS256, keys from the test's own JWKS server, which it rotates).

Refused requests must never reach the mock: the mock's request count is compared.
The rotation test runs last in this module: it changes which keys the gateway knows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import jwt
import pytest
from tests.harness.pinning import PinnedConnection, pin_workers
from tests.harness.scrape import scrape

from .support import REQUIRED_SCOPE, Stack, claims, handmade_token, unique

# From tests/policies/routes.yaml, routes `jwt` and `jwks`.
LEEWAY_SECONDS = 5
JWKS_MIN_REFRESH_SECONDS = 1.0

Token = Callable[[Stack], str]


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway.url, timeout=10) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def hs256(stack: Stack, **overrides: object) -> str:
    """A token for /jwt; times are taken now, when the test runs."""
    return jwt.encode(claims(**overrides), stack.hs256_secret, algorithm="HS256")


def mock_requests(stack: Stack) -> float:
    return scrape(stack.mock).total("http_server_requests_total")


def assert_unauthorized(response: httpx.Response, description: str | None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:platform:problem:unauthorized", response.text
    challenge = response.headers["www-authenticate"]
    if description is None:
        # No credentials at all: the bare challenge (RFC 6750 section 3.1).
        assert challenge == 'Bearer realm="gateway"', challenge
    else:
        assert challenge.startswith('Bearer realm="gateway", error="invalid_token"'), challenge
        assert description in challenge, challenge


def now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------- HS256


def test_a_valid_token_reaches_the_mock_as_subject_and_scopes(
    stack: Stack, client: httpx.Client
) -> None:
    response = client.get("/jwt/echo", headers=bearer(hs256(stack)))

    assert response.status_code == 200, response.text
    seen = response.json()["headers"]
    assert seen["x-auth-subject"] == "user-42"
    assert seen["x-auth-scopes"] == f"{REQUIRED_SCOPE} profile"
    assert "authorization" not in seen, "the token went upstream (forward_authorization: false)"


def test_a_token_just_expired_is_inside_the_leeway(stack: Stack, client: httpx.Client) -> None:
    token = hs256(stack, exp=now() - 2, iat=now() - 60, nbf=now() - 60)
    response = client.get("/jwt/echo", headers=bearer(token))
    assert response.status_code == 200, f"{LEEWAY_SECONDS} s of leeway: {response.text}"


# Each token is made when its test runs, so the times in it are relative to then.
REFUSED: dict[str, tuple[Token, str]] = {
    "expired": (
        lambda stack: hs256(stack, exp=now() - 60, iat=now() - 400, nbf=now() - 400),
        "the token has expired",
    ),
    "not yet valid": (lambda stack: hs256(stack, nbf=now() + 60), "the token is not valid yet"),
    "wrong audience": (
        lambda stack: hs256(stack, aud="another-service"),
        "the token is not meant for this audience",
    ),
    "wrong issuer": (
        lambda stack: hs256(stack, iss="https://evil.example/"),
        "the token's issuer is not trusted here",
    ),
    "no subject": (lambda stack: hs256(stack, sub=None), "the token has no sub claim"),
    "bad signature": (
        lambda stack: jwt.encode(claims(), "x" * 48, algorithm="HS256"),
        "the token's signature does not verify",
    ),
    "alg none": (
        lambda stack: handmade_token({"alg": "none", "typ": "JWT"}, claims(), b""),
        "unsigned tokens are not accepted",
    ),
    "RS256 on the HS256 route": (
        lambda stack: stack.rsa_keys["k1"].sign(claims()),
        "the token's algorithm is not HS256",
    ),
    "garbage": (lambda stack: "not-a.jwt-at.all", "the token is malformed"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_tokens_are_401_and_never_reach_the_mock(
    stack: Stack, client: httpx.Client, case: str
) -> None:
    make, description = REFUSED[case]
    before = mock_requests(stack)

    response = client.get("/jwt/echo", headers=bearer(make(stack)))

    assert_unauthorized(response, description)
    assert mock_requests(stack) == before


def test_no_token_is_401_with_a_bare_challenge(stack: Stack, client: httpx.Client) -> None:
    assert_unauthorized(client.get("/jwt/echo"), None)
    # Another scheme counts as no credentials.
    assert_unauthorized(client.get("/jwt/echo", headers={"authorization": "Basic dTpw"}), None)


def test_a_missing_scope_is_403_insufficient_scope(stack: Stack, client: httpx.Client) -> None:
    before = mock_requests(stack)

    response = client.get("/jwt/echo", headers=bearer(hs256(stack, scope="profile")))

    assert response.status_code == 403, response.text
    assert response.json()["type"] == "urn:platform:problem:insufficient-scope"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="gateway", error="insufficient_scope"'), challenge
    assert f'scope="{REQUIRED_SCOPE}"' in challenge, challenge
    assert mock_requests(stack) == before


# --------------------------------------------------------------------------- JWKS (RS256)


def test_a_token_signed_by_a_published_key_is_accepted(stack: Stack, client: httpx.Client) -> None:
    response = client.get("/jwks/echo", headers=bearer(stack.rsa_keys["k1"].sign(claims())))
    assert response.status_code == 200, response.text
    assert response.json()["headers"]["x-auth-subject"] == "user-42"


def test_hs256_signed_with_the_rsa_public_key_is_refused(
    stack: Stack, client: httpx.Client
) -> None:
    """The classic key confusion: HMAC over the token with the public PEM as the secret.

    A verifier that let the token's `alg` pick the algorithm would check the HMAC with
    the key it has (the public key, which anyone can fetch) and accept.
    """
    key = stack.rsa_keys["k1"]
    before = mock_requests(stack)
    for header in ({"alg": "HS256", "kid": key.kid}, {"alg": "HS256"}):
        token = handmade_token({**header, "typ": "JWT"}, claims(), key.public_pem())
        response = client.get("/jwks/echo", headers=bearer(token))
        assert_unauthorized(response, "the token's algorithm is not RS256")
    assert mock_requests(stack) == before


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    stack: Stack, client: httpx.Client
) -> None:
    token = stack.rsa_keys["intruder"].sign(claims(), kid="k1")
    response = client.get("/jwks/echo", headers=bearer(token))
    assert_unauthorized(response, "the token's signature does not verify")


def test_unknown_kids_refresh_the_key_set_at_most_once_per_interval(stack: Stack) -> None:
    # Tokens naming made-up kids, as fast as one client can send them, on every worker:
    # each worker asks the JWKS server at most once per jwks_min_refresh_seconds.
    intruder = stack.rsa_keys["intruder"]
    time.sleep(JWKS_MIN_REFRESH_SECONDS + 0.1)  # whatever refreshed before is out of the way
    with pin_workers(stack.gateway) as workers:
        before = stack.jwks.fetch_count()
        started = time.monotonic()
        sent = 0
        for _ in range(20):
            for conn in workers:
                token = intruder.sign(claims(), kid=unique("made-up"))
                reply = conn.request("GET", "/jwks/echo", headers=bearer(token))
                assert reply.status == 401, reply.describe()
                sent += 1
        elapsed = time.monotonic() - started
        fetches = stack.jwks.fetch_count() - before
    allowed = len(workers) * (1 + int(elapsed / JWKS_MIN_REFRESH_SECONDS))
    print(f"\nJWKS refreshes for {sent} unknown kids in {elapsed:.2f} s: {fetches}")
    assert len(workers) <= fetches <= allowed, (
        f"{fetches} JWKS fetches for {sent} tokens with unknown kids over {elapsed:.2f} s;"
        f" expected one per worker, at most {allowed}"
    )


def test_key_rotation_new_kid_accepted_removed_kid_refused(stack: Stack) -> None:
    old, new = stack.rsa_keys["k1"], stack.rsa_keys["k2"]
    try:
        with pin_workers(stack.gateway) as workers:
            for conn in workers:
                assert_status(conn, old.sign(claims()), 200, "before the rotation")
            # The identity provider rotates: k2 in, k1 out.
            stack.jwks.publish(new)
            # A fetch made in the last interval would keep the next one from happening.
            time.sleep(JWKS_MIN_REFRESH_SECONDS + 0.1)
            for conn in workers:
                # An unknown kid makes each worker fetch the new set, then verify.
                assert_status(conn, new.sign(claims()), 200, "with the rotated-in kid")
            for conn in workers:
                assert_status(conn, old.sign(claims()), 401, "with the rotated-out kid")
    finally:
        stack.jwks.publish(old, new)


def assert_status(conn: PinnedConnection, token: str, status: int, when: str) -> None:
    reply = conn.request("GET", "/jwks/echo", headers=bearer(token))
    assert reply.status == status, f"worker {conn.worker_pid}, {when}: {reply.describe()}"
