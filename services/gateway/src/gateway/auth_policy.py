"""Per-route auth policies as written in the route file, checked once at start-up.

    auth: {type: none}                 # the default: nothing checked, nothing added

    auth:
      type: jwt
      issuer: https://id.example.com/
      audience: gateway                # or a list; a token must name one of them
      jwks_url: https://id.example.com/.well-known/jwks.json    # RS256 / ES256 keys
      # hs256_secret_env: JWT_SECRET   # ... or a shared HS256 secret, from env or file
      required_scopes: [orders:read]

    auth:
      type: api_key
      header: X-API-Key
      keys_file: /run/secrets/api-keys   # SHA-256 digests, see `apikeys`

Secrets and key files are read while the policy is validated, so an unset variable or an
unreadable file stops start-up with one line that starts with the setting's name. What
was read is held in private attributes, out of `repr()` and `model_dump()`.

Validators read the environment from `context["environ"]` when the caller validates with
`Model.model_validate(data, context={"environ": environ})`, and `os.environ` otherwise.
Relative paths are relative to the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import InvalidKeyError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.apikeys import StoredKey, parse_keys, split_variable
from gateway.headers import HOP_BY_HOP

Algorithm = Literal["HS256", "RS256", "ES256"]
SECRET_ALGORITHMS = frozenset({"HS256"})
JWKS_ALGORITHMS = frozenset({"RS256", "ES256"})
# RFC 7518 section 3.2: an HS256 key at least as long as the hash output.
MIN_HS256_SECRET_BYTES = 32

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
NonEmpty = Annotated[str, Field(min_length=1)]
# RFC 6749 section 3.3, so that a scope can be quoted in WWW-Authenticate as it is.
ScopeToken = Annotated[str, Field(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+$")]
HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


def _as_tuple(value: object) -> object:
    return (value,) if isinstance(value, str) else value


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAuthPolicy(_Policy):
    type: Literal["none"] = "none"


class JwtPolicy(_Policy):
    type: Literal["jwt"] = "jwt"
    issuer: NonEmpty
    # One audience or a list of them; a token must name at least one.
    audience: Annotated[tuple[NonEmpty, ...], Field(min_length=1), BeforeValidator(_as_tuple)]
    # None: derived from the key source (HS256 for a secret, RS256 and ES256 for JWKS).
    algorithms: Annotated[tuple[Algorithm, ...], Field(min_length=1)] | None = None
    hs256_secret_env: EnvName | None = None
    hs256_secret_file: Path | None = None
    jwks_url: str | None = None
    jwks_cache_seconds: float = Field(default=300, gt=0, le=86400)
    jwks_min_refresh_seconds: float = Field(default=30, ge=1, le=3600)
    leeway_seconds: float = Field(default=30, ge=0, le=300)
    required_scopes: tuple[ScopeToken, ...] = ()
    forward_authorization: bool = False

    _hs256_secret: bytes | None = PrivateAttr(default=None)

    @property
    def allowed_algorithms(self) -> frozenset[str]:
        if self.algorithms is not None:
            return frozenset(self.algorithms)
        return JWKS_ALGORITHMS if self.jwks_url is not None else SECRET_ALGORITHMS

    @property
    def hs256_secret(self) -> bytes | None:
        """The secret read at validation; None for a JWKS policy."""
        return self._hs256_secret

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.fragment or parts.username or parts.password:
            raise ValueError("must not have a fragment or credentials")
        _ = parts.port  # raises ValueError for a bad port
        return value

    @model_validator(mode="after")
    def _key_source(self, info: ValidationInfo) -> Self:
        sources = [
            name
            for name in ("hs256_secret_env", "hs256_secret_file", "jwks_url")
            if getattr(self, name) is not None
        ]
        if len(sources) != 1:
            given = f" (given: {', '.join(sources)})" if sources else ""
            raise ValueError(
                "jwt needs exactly one key source: hs256_secret_env, hs256_secret_file "
                f"or jwks_url{given}"
            )
        if self.jwks_url is not None:
            if self.algorithms is not None and not set(self.algorithms) <= JWKS_ALGORITHMS:
                raise ValueError(
                    "algorithms: HS256 needs hs256_secret_env or hs256_secret_file; keys from "
                    "jwks_url verify only RS256 and ES256"
                )
            if self.jwks_min_refresh_seconds > self.jwks_cache_seconds:
                raise ValueError("jwks_min_refresh_seconds must not exceed jwks_cache_seconds")
            return self
        if self.algorithms is not None and not set(self.algorithms) <= SECRET_ALGORITHMS:
            raise ValueError(
                "algorithms: RS256 and ES256 need jwks_url; a shared secret verifies only HS256"
            )
        if self.hs256_secret_env is not None:
            setting = "hs256_secret_env"
            secret = _read_variable(setting, self.hs256_secret_env, info).encode()
            where = f"the variable {self.hs256_secret_env}"
        else:
            assert self.hs256_secret_file is not None
            setting = "hs256_secret_file"
            # A trailing newline is how editors and `echo` end files, never part of a secret.
            secret = _read_file(setting, self.hs256_secret_file).rstrip(b"\r\n")
            where = str(self.hs256_secret_file)
        self._hs256_secret = _checked_secret(setting, where, secret)
        return self


class ApiKeyPolicy(_Policy):
    type: Literal["api_key"] = "api_key"
    header: HeaderName = "X-API-Key"
    keys_file: Path | None = None
    keys_env: EnvName | None = None
    forward_authorization: bool = False

    _keys: tuple[StoredKey, ...] = PrivateAttr(default=())

    @property
    def stored_keys(self) -> tuple[StoredKey, ...]:
        """The digests read at validation."""
        return self._keys

    @property
    def header_name(self) -> bytes:
        """The header as ASGI spells it: lower-case bytes."""
        return self.header.lower().encode("ascii")

    @field_validator("header")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        lowered = value.lower()
        if lowered.encode() in HOP_BY_HOP or lowered in ("host", "content-length", "cookie"):
            raise ValueError(f"{value} cannot carry an API key")
        if lowered.replace("_", "-").startswith("x-auth-"):
            raise ValueError("X-Auth-* headers are the gateway's own and cannot carry a key")
        return value

    @model_validator(mode="after")
    def _load_keys(self, info: ValidationInfo) -> Self:
        if (self.keys_file is None) == (self.keys_env is None):
            raise ValueError("api_key needs exactly one of keys_file or keys_env")
        if self.keys_file is not None:
            text = _read_file("keys_file", self.keys_file).decode("utf-8", errors="replace")
            source, unit, entries = f"keys_file {self.keys_file}", "line", text.splitlines()
        else:
            assert self.keys_env is not None
            value = _read_variable("keys_env", self.keys_env, info)
            source, unit, entries = f"keys_env {self.keys_env}", "entry", split_variable(value)
        self._keys = parse_keys(entries, source=source, unit=unit)
        return self


AuthPolicy = Annotated[NoAuthPolicy | JwtPolicy | ApiKeyPolicy, Field(discriminator="type")]


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    context = info.context
    if isinstance(context, Mapping) and isinstance(context.get("environ"), Mapping):
        environ: Mapping[str, str] = context["environ"]
        return environ
    return os.environ


def _read_variable(setting: str, name: str, info: ValidationInfo) -> str:
    value = _environ(info).get(name)
    if not value:
        raise ValueError(f"{setting}: the environment variable {name} is not set or empty")
    return value


def _read_file(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _checked_secret(setting: str, where: str, secret: bytes) -> bytes:
    if len(secret) < MIN_HS256_SECRET_BYTES:
        raise ValueError(
            f"{setting}: the secret in {where} is {len(secret)} bytes; HS256 needs at least "
            f"{MIN_HS256_SECRET_BYTES}"
        )
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except InvalidKeyError:
        raise ValueError(
            f"{setting}: {where} holds a PEM or SSH key, not a shared secret; "
            "publish public keys with jwks_url instead"
        ) from None
    return secret
