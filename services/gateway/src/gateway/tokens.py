"""Verifying one JWT: the key picks the algorithm, then PyJWT checks signature and claims.

The token's header is read only to find the key (`kid`). The key then fixes the one
algorithm that may be used: an HS256 secret verifies only HS256, an RSA key only RS256,
an EC P-256 key only ES256. A header naming any other algorithm, `none` included, is
refused before any cryptography runs, and PyJWT is told to accept only that algorithm,
so an HS256 token "signed" with an RSA public key can never meet an HMAC check.

Claims: `exp`, `iss`, `aud` and `sub` are required; `exp`, `nbf` and `iat` are checked
with the configured leeway. `sub` must be text that can travel in a header (no control
characters). Scopes come from `scope` (space-separated, RFC 9068) and `scp` (a list, or a
space-separated string as some providers send it); both are merged.

Nothing is cached per token: a verdict never outlives the request that asked for it.
The parsed keys are what is cached (see `jwks`).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from gateway.jwks import VerificationKey

REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")
MAX_SUBJECT_CHARS = 1024
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidToken(Exception):
    """The token is not accepted; `description` is safe to show the client."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class KeySource(Protocol):
    async def get(self, kid: str | None) -> VerificationKey | None:
        """The key for a token whose header names `kid` (or none), if there is one."""
        ...


class SecretKey:
    """An HS256 shared secret: one key, whatever `kid` a token names."""

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        self._key = VerificationKey(None, "HS256", secret)

    async def get(self, kid: str | None) -> VerificationKey:
        return self._key


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    scopes: frozenset[str]


class TokenVerifier:
    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str | Collection[str],
        leeway: float,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience if isinstance(audience, str) else list(audience)
        self._leeway = leeway
        # A short HMAC secret or RSA key is an error, not a warning, at verification too.
        self._jwt = jwt.PyJWT(
            options={"require": list(REQUIRED_CLAIMS), "enforce_minimum_key_length": True}
        )

    async def verify(self, token: str) -> VerifiedToken:
        """The subject and scopes of a valid `token`; InvalidToken otherwise."""
        header = _unverified_header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidToken("unsigned tokens are not accepted")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token is malformed")
        key = await self._keys.get(kid)
        if key is None:
            raise InvalidToken("no key is known for this token's kid")
        if alg != key.algorithm:
            raise InvalidToken(f"the token's algorithm is not {key.algorithm}, as its key requires")
        claims = self._decode(token, key)
        return VerifiedToken(_subject(claims), _scopes(claims))

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        try:
            return self._jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            description = "the token has expired"
        except jwt.ImmatureSignatureError:
            description = "the token is not valid yet"
        except jwt.InvalidAudienceError:
            description = "the token is not meant for this audience"
        except jwt.InvalidIssuerError:
            description = "the token's issuer is not trusted here"
        except jwt.MissingRequiredClaimError as exc:
            description = f"the token has no {exc.claim} claim"
        except jwt.InvalidSignatureError:
            description = "the token's signature does not verify"
        except jwt.InvalidAlgorithmError:
            description = f"the token's algorithm is not {key.algorithm}, as its key requires"
        except jwt.DecodeError:
            description = "the token is malformed"
        except jwt.InvalidTokenError:
            description = "the token is invalid"
        except jwt.InvalidKeyError:
            description = "the token's key cannot be used"
        raise InvalidToken(description)


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to choose a key.

    A quick read (PyJWT's `get_unverified_header` is 5x slower, and `decode` reads the
    header again anyway): nothing here decides acceptance. `decode` re-reads the header
    strictly and accepts only the chosen key's one algorithm.
    """
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # binascii.Error and JSONDecodeError included
        raise InvalidToken("the token is malformed") from None
    if not isinstance(header, dict):
        raise InvalidToken("the token is malformed")
    return header


def _subject(claims: dict[str, Any]) -> str:
    subject = claims["sub"]  # required, and PyJWT has checked it is a string
    if not subject or len(subject) > MAX_SUBJECT_CHARS or _CONTROL.search(subject):
        raise InvalidToken("the token's sub claim is empty, too long or has control characters")
    return str(subject)


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    found: list[str] = []
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if value is None:
            continue
        if isinstance(value, str):
            found.extend(value.split(" "))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            found.extend(value)
        else:
            raise InvalidToken(f"the token's {claim} claim is malformed")
    scopes = frozenset(s for s in found if s)
    if not all(SCOPE_TOKEN.fullmatch(s) for s in scopes):
        raise InvalidToken("the token's scopes hold characters a scope may not have")
    return scopes
