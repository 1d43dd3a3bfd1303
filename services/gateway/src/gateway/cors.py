"""CORS per route: preflights answered by the gateway, response headers added by it.

In the route file, a default for every route at the top, and per route an override,
or `cors: null` to have none (the file's YAML anchors can share one policy):

    cors:                                   # routes without their own `cors:` get this
      allow_origins: [https://app.example.com]
    routes:
      - name: api
        prefix: /api
        upstream: http://api:8080
        cors:
          allow_origins: [https://app.example.com, http://localhost:3000]
          allow_methods: [GET, POST, PUT, DELETE]
          allow_headers: [authorization, content-type]
          expose_headers: [x-request-id, retry-after]
          allow_credentials: true
          max_age: 600
      - name: internal
        prefix: /internal
        upstream: http://internal:8080
        cors: null                          # no CORS headers; preflights are forwarded

On a route with a policy the gateway owns CORS: a preflight (OPTIONS with Origin and
Access-Control-Request-Method) is answered here, 204 or 403 problem+json, and never
forwarded, so it needs no auth; any Access-Control-* header from the upstream is
replaced by the policy's, so an upstream that reflects every Origin cannot widen it.
CORS only decides what a browser lets a page read: a request from an origin not
allowed is still forwarded (it is not access control, nor CSRF protection).
"""

from __future__ import annotations

import re
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.types import Message, Scope, Send

from gateway.errors import GatewayError
from servicekit.problem import send_problem

# An RFC 9110 token, or "*".
Token = Annotated[str, Field(pattern=r"^(\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")]
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS name or an IP literal; no wildcards ("https://*.example.com" is no origin).
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]+")
# Everything a policy sets: never taken from the upstream on a route that has one.
_OWNED = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)
# Fetch: a browser accepts these after any successful preflight, listed or not.
_SAFELISTED_METHODS = frozenset({b"GET", b"HEAD", b"POST"})
_PREFLIGHT_VARY = (
    b"vary",
    b"origin, access-control-request-method, access-control-request-headers",
)


class CorsDenied(GatewayError):
    status = 403
    slug = "cors-denied"


class CorsPolicy(BaseModel):
    """One route's CORS policy, as written in the route file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_origins: tuple[str, ...] = Field(
        min_length=1, description='exact origins such as "https://app.example.com", or "*"'
    )
    allow_methods: tuple[Token, ...] = ("GET", "HEAD", "POST")
    allow_headers: tuple[Token, ...] = ()
    expose_headers: tuple[Token, ...] = ()
    allow_credentials: bool = False
    max_age: int = Field(default=600, ge=0, le=86400, description="seconds a preflight is cached")

    @field_validator("allow_origins")
    @classmethod
    def _origins_are_serialised_origins(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in values:
            if len(values) > 1:
                raise ValueError('"*" must be the only origin')
            return values
        return tuple(_origin(value) for value in values)

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _lower_case(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(value.lower() for value in values)

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Self:
        # Browsers refuse "*" on credentialed requests; a policy relying on it would fail
        # in a way that is hard to see, so it is refused here instead.
        if self.allow_credentials:
            for field in ("allow_origins", "allow_methods", "allow_headers", "expose_headers"):
                if "*" in getattr(self, field):
                    raise ValueError(f'{field} cannot hold "*" when allow_credentials is true')
        return self


def _origin(value: str) -> str:
    """`value` as browsers send it in Origin: scheme://host[:port], lower case."""
    parts = urlsplit(value)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or not value.isascii():
        raise ValueError(f"{value!r} is not an origin such as https://app.example.com")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} must be scheme://host[:port], with nothing after it")
    port = parts.port
    if not _HOST.fullmatch(parts.hostname):
        raise ValueError(f"{value!r} does not name one host")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


class Cors:
    """A compiled `CorsPolicy`: header values built once, lookups in sets."""

    def __init__(self, policy: CorsPolicy) -> None:
        self.policy = policy
        self._any_origin = policy.allow_origins == ("*",)
        self._origins = frozenset(o.encode() for o in policy.allow_origins)
        self._any_method = "*" in policy.allow_methods
        self._methods = frozenset(m.encode() for m in policy.allow_methods)
        self._any_header = "*" in policy.allow_headers
        self._headers = frozenset(h.encode() for h in policy.allow_headers)
        # With "*" and no credentials every response is the same for every origin:
        # no Vary needed. Otherwise caches must keep one answer per Origin.
        self._same_for_all = self._any_origin and not policy.allow_credentials
        common: list[tuple[bytes, bytes]] = []
        if policy.allow_credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        self._actual = list(common)
        if policy.expose_headers:
            self._actual.append(
                (b"access-control-expose-headers", ", ".join(policy.expose_headers).encode())
            )
        self._preflight = [*common, (b"access-control-max-age", str(policy.max_age).encode())]
        self._methods_value = ", ".join(policy.allow_methods).encode()
        self._headers_value = ", ".join(policy.allow_headers).encode()

    def wrap(self, scope: Scope, send: Send) -> Send:
        """`send`, with this policy's headers on the response (for any request)."""
        origin = _header(scope, b"origin")
        allowed = origin is not None and self._allows_origin(origin)
        added: list[tuple[bytes, bytes]] = []
        if allowed:
            assert origin is not None
            added.append((b"access-control-allow-origin", self._allow_origin_value(origin)))
            added.extend(self._actual)
        if not self._same_for_all:
            added.append((b"vary", b"origin"))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() not in _OWNED
                ]
                message = {**message, "headers": headers + added}
            await send(message)

        return send_with_cors

    @staticmethod
    def is_preflight(scope: Scope) -> bool:
        return (
            scope["method"] == "OPTIONS"
            and _header(scope, b"origin") is not None
            and _header(scope, b"access-control-request-method") is not None
        )

    async def answer_preflight(self, scope: Scope, send: Send) -> None:
        """204 with what the browser asked for, or 403 problem+json saying what is not."""
        origin = _header(scope, b"origin") or b""
        method = (_header(scope, b"access-control-request-method") or b"").strip()
        requested = _header(scope, b"access-control-request-headers") or b""
        names = [n.strip().lower() for n in requested.split(b",") if n.strip()]
        refusal = self._preflight_refusal(origin, method, names)
        if refusal is not None:
            error = CorsDenied(refusal)
            await send_problem(
                send, error.status, error.detail, slug=error.slug, headers=[_PREFLIGHT_VARY]
            )
            return
        headers = [
            (b"access-control-allow-origin", self._allow_origin_value(origin)),
            (b"access-control-allow-methods", method if self._any_method else self._methods_value),
            *self._preflight,
            _PREFLIGHT_VARY,
            (b"content-length", b"0"),
        ]
        if names:
            value = requested if self._any_header else self._headers_value
            headers.append((b"access-control-allow-headers", value))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _preflight_refusal(self, origin: bytes, method: bytes, names: list[bytes]) -> str | None:
        if not self._allows_origin(origin):
            return "this origin is not allowed on this route"
        if not self._any_method and method not in self._methods | _SAFELISTED_METHODS:
            return f"method {method.decode('latin-1')!r} is not allowed on this route"
        if not self._any_header:
            refused = [n.decode("latin-1") for n in names if n not in self._headers]
            if refused:
                return f"header {refused[0]!r} is not allowed on this route"
        return None

    def _allows_origin(self, origin: bytes) -> bool:
        return self._any_origin or origin.lower() in self._origins

    def _allow_origin_value(self, origin: bytes) -> bytes:
        return b"*" if self._same_for_all else origin


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
