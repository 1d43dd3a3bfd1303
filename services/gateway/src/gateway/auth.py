"""Who is calling: per-route authentication, and the headers that say so upstream.

    GatewayError (gateway.errors)
    ├── Unauthorized   401  unauthorized        no credentials, or ones that do not verify
    └── Forbidden      403  insufficient-scope  a valid token without a required scope

Both carry a `WWW-Authenticate` challenge (RFC 6750 for Bearer; the same parameters under
an `ApiKey` scheme for API keys). A request without credentials gets the bare challenge,
with no `error`, as RFC 6750 section 3.1 asks; anything presented and refused gets
`error="invalid_token"` (or `"invalid_key"`) and a short `error_description` that names
the reason (expired, wrong audience, ...) and never echoes what the client sent.

Per request, the proxy calls the route's `Authenticator`, then builds upstream headers
from the client's minus every `X-Auth-*` (`strip_client_auth_headers`) plus the ones the
gateway vouches for (`principal_headers`). Policies are in `auth_policy`; JWT checks in
`tokens`, key sets in `jwks`, API keys in `apikeys`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from gateway.apikeys import ApiKeyStore
from gateway.auth_policy import ApiKeyPolicy, AuthPolicy, JwtPolicy, NoAuthPolicy
from gateway.errors import GatewayError
from gateway.jwks import JwksCache
from gateway.tokens import InvalidToken, KeySource, SecretKey, TokenVerifier

__all__ = [
    "ANONYMOUS",
    "ApiKeyAuthenticator",
    "AuthPolicy",
    "Authenticator",
    "Forbidden",
    "JwtAuthenticator",
    "NoAuthenticator",
    "Principal",
    "Unauthorized",
    "build_authenticator",
    "principal_headers",
    "strip_client_auth_headers",
]

REALM = "gateway"
RawHeaders = Sequence[tuple[bytes, bytes]]

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_BEARER = re.compile(r"(?i:bearer) +([A-Za-z0-9\-._~+/]+=*) *")
# What a quoted-string parameter of a challenge may hold, per RFC 6750 section 3.
_UNQUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def challenge(scheme: str, **params: str | None) -> bytes:
    """A WWW-Authenticate value: `Bearer realm="gateway", error="...", ...`."""
    parts = [f'realm="{REALM}"']
    parts += [
        f'{name}="{_UNQUOTABLE.sub("", value)}"'
        for name, value in params.items()
        if value is not None
    ]
    return f"{scheme} {', '.join(parts)}".encode("ascii")


class Unauthorized(GatewayError):
    status = 401
    slug = "unauthorized"

    def __init__(self, detail: str, *, www_authenticate: bytes) -> None:
        super().__init__(detail, headers=[(b"www-authenticate", www_authenticate)])


class Forbidden(GatewayError):
    status = 403
    slug = "insufficient-scope"

    def __init__(self, detail: str, *, www_authenticate: bytes) -> None:
        super().__init__(detail, headers=[(b"www-authenticate", www_authenticate)])


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the gateway vouches for upstream. `subject` is "" for anonymous requests."""

    subject: str
    scopes: frozenset[str] = frozenset()

    @property
    def anonymous(self) -> bool:
        return not self.subject


ANONYMOUS = Principal("")


class Authenticator(Protocol):
    """One route's check. Built at start-up by `build_authenticator`, in the worker."""

    @property
    def drop_headers(self) -> frozenset[bytes]:
        """Request headers (lower-case) that carry the credential and stay at the gateway."""
        ...

    async def authenticate(self, headers: RawHeaders) -> Principal:
        """The caller behind `headers` (ASGI, lower-case names); Unauthorized or Forbidden."""
        ...

    async def start(self) -> None:
        """Warm up (fetch a key set) in the lifespan; logs, never raises, if that fails."""
        ...

    async def aclose(self) -> None: ...


class NoAuthenticator:
    drop_headers: frozenset[bytes] = frozenset()

    async def authenticate(self, headers: RawHeaders) -> Principal:
        return ANONYMOUS

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class JwtAuthenticator:
    """Bearer tokens (RFC 6750) checked by a `TokenVerifier`, then for required scopes."""

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        required_scopes: Sequence[str] = (),
        forward_authorization: bool = False,
        jwks: JwksCache | None = None,
    ) -> None:
        self._verifier = verifier
        self._required = tuple(required_scopes)
        self._jwks = jwks
        self.drop_headers = frozenset() if forward_authorization else frozenset({b"authorization"})

    async def authenticate(self, headers: RawHeaders) -> Principal:
        token = _bearer_token(headers)
        try:
            verified = await self._verifier.verify(token)
        except InvalidToken as exc:
            raise Unauthorized(
                exc.description,
                www_authenticate=challenge(
                    "Bearer", error="invalid_token", error_description=exc.description
                ),
            ) from None
        missing = [s for s in self._required if s not in verified.scopes]
        if missing:
            detail = f"the token lacks the scope {' '.join(missing)}"
            raise Forbidden(
                detail,
                www_authenticate=challenge(
                    "Bearer",
                    error="insufficient_scope",
                    error_description=detail,
                    scope=" ".join(self._required),
                ),
            )
        return Principal(verified.subject, verified.scopes)

    async def start(self) -> None:
        if self._jwks is not None:
            await self._jwks.refresh()

    async def aclose(self) -> None:
        if self._jwks is not None:
            await self._jwks.aclose()


def _bearer_token(headers: RawHeaders) -> str:
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if not values:
        raise Unauthorized("a bearer token is required", www_authenticate=challenge("Bearer"))
    if len(values) > 1:
        raise _invalid_token("more than one Authorization header")
    value = values[0].decode("latin-1")
    if value.split(" ", 1)[0].lower() != "bearer":
        # Another scheme (Basic, ...) counts as no credentials at all (RFC 6750 section 3.1).
        raise Unauthorized("a bearer token is required", www_authenticate=challenge("Bearer"))
    match = _BEARER.fullmatch(value)
    if match is None:
        raise _invalid_token("the token is malformed")
    return match.group(1)


def _invalid_token(description: str) -> Unauthorized:
    return Unauthorized(
        description,
        www_authenticate=challenge("Bearer", error="invalid_token", error_description=description),
    )


class ApiKeyAuthenticator:
    """A key in one request header, matched against stored SHA-256 digests."""

    def __init__(
        self, store: ApiKeyStore, *, header: str, forward_authorization: bool = False
    ) -> None:
        self._store = store
        self._header = header.lower().encode("ascii")
        self._header_text = header  # as configured, for messages
        self.drop_headers = frozenset() if forward_authorization else frozenset({self._header})

    async def authenticate(self, headers: RawHeaders) -> Principal:
        values = [value for name, value in headers if name.lower() == self._header]
        if not values:
            raise Unauthorized(
                f"an API key is required in {self._header_text}",
                www_authenticate=challenge("ApiKey", header=self._header_text),
            )
        if len(values) > 1:
            raise self._invalid(f"more than one {self._header_text} header")
        # Never logged, never echoed: only its digest is ever compared.
        key = self._store.match(values[0])
        if key is None:
            raise self._invalid("the API key is not valid")
        return Principal(key.subject)

    def _invalid(self, description: str) -> Unauthorized:
        return Unauthorized(
            description,
            www_authenticate=challenge(
                "ApiKey",
                header=self._header_text,
                error="invalid_key",
                error_description=description,
            ),
        )

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def build_authenticator(
    policy: AuthPolicy,
    *,
    http: httpx.AsyncClient | None,
    clock: Callable[[], float] = time.monotonic,
) -> Authenticator:
    """The authenticator for one route's validated `policy`.

    `http` fetches JWKS documents (it is needed only when a policy has `jwks_url`); give
    it a client of its own, not the upstream one. Build inside the worker's event loop
    (the lifespan), call `start()` there, and `aclose()` on shutdown. `clock` is for tests.
    """
    if isinstance(policy, NoAuthPolicy):
        return NoAuthenticator()
    if isinstance(policy, ApiKeyPolicy):
        return ApiKeyAuthenticator(
            ApiKeyStore(policy.stored_keys),
            header=policy.header,
            forward_authorization=policy.forward_authorization,
        )
    return _jwt_authenticator(policy, http=http, clock=clock)


def _jwt_authenticator(
    policy: JwtPolicy, *, http: httpx.AsyncClient | None, clock: Callable[[], float]
) -> JwtAuthenticator:
    jwks: JwksCache | None = None
    keys: KeySource
    if policy.jwks_url is not None:
        if http is None:
            raise ValueError("a jwt policy with jwks_url needs an http client to fetch keys")
        jwks = JwksCache(
            policy.jwks_url,
            http,
            algorithms=policy.allowed_algorithms,
            cache_seconds=policy.jwks_cache_seconds,
            min_refresh_seconds=policy.jwks_min_refresh_seconds,
            clock=clock,
        )
        keys = jwks
    else:
        assert policy.hs256_secret is not None  # the policy's validator read it
        keys = SecretKey(policy.hs256_secret)
    verifier = TokenVerifier(
        keys,
        issuer=policy.issuer,
        audience=policy.audience,
        leeway=policy.leeway_seconds,
    )
    return JwtAuthenticator(
        verifier,
        required_scopes=policy.required_scopes,
        forward_authorization=policy.forward_authorization,
        jwks=jwks,
    )


def _is_auth_header(name: bytes) -> bool:
    # `_` too: many servers (CGI, Django, PHP, nginx with underscores_in_headers) read
    # X_Auth_Subject as X-Auth-Subject, so a client must not be able to send either.
    return name.lower().replace(b"_", b"-").startswith(b"x-auth-")


def strip_client_auth_headers(
    headers: RawHeaders, *, drop: Collection[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """`headers` without any `X-Auth-*` (also spelt with `_`) and without the `drop` names.

    Apply to every proxied request, on routes with and without auth: the upstream must be
    able to trust that `X-Auth-*` came from the gateway. `drop` is the authenticator's
    `drop_headers` (lower-case). Tokens naming `X-Auth-*` are taken out of `Connection`
    too, so a client cannot make the hop-by-hop filter remove the gateway's own headers.
    """
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lowered = name.lower()
        if _is_auth_header(lowered) or lowered in drop:
            continue
        if lowered == b"connection":
            kept = [t for t in value.split(b",") if t.strip() and not _is_auth_header(t.strip())]
            if kept:
                out.append((name, b",".join(kept)))
            continue
        out.append((name, value))
    return out


def principal_headers(principal: Principal) -> list[tuple[bytes, bytes]]:
    """`X-Auth-Subject` and `X-Auth-Scopes` (space-separated, sorted); none if anonymous.

    The subject is sent as UTF-8; it never holds control characters (see `tokens`).
    """
    if principal.anonymous:
        return []
    return [
        (b"x-auth-subject", principal.subject.encode("utf-8")),
        (b"x-auth-scopes", " ".join(sorted(principal.scopes)).encode("ascii")),
    ]
