"""Policy validation: every mistake stops start-up with one line naming the setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.apikeys import key_digest
from gateway.auth_policy import ApiKeyPolicy, AuthPolicy, JwtPolicy, NoAuthPolicy

SECRET = "0123456789abcdef0123456789abcdef"  # 32 bytes, the minimum
ENVIRON = {"JWT_SECRET": SECRET, "SHORT": "too-short", "KEYS": key_digest(b"k")}
JWT = {"type": "jwt", "issuer": "https://id.example", "audience": "gateway"}


class Route(BaseModel):
    """Stands in for the route table's RouteConfig."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    auth: AuthPolicy = NoAuthPolicy()


def load(auth: dict[str, Any] | None, environ: dict[str, str] = ENVIRON) -> Any:
    data = {} if auth is None else {"auth": auth}
    return Route.model_validate(data, context={"environ": environ}).auth


def failure(auth: dict[str, Any], environ: dict[str, str] = ENVIRON) -> tuple[str, str]:
    """(location, message) of the first error, as the route loader reports them."""
    with pytest.raises(ValidationError) as caught:
        load(auth, environ)
    error = caught.value.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    assert "\n" not in message
    return ".".join(str(p) for p in error["loc"]), message


def test_the_default_is_no_auth() -> None:
    assert load(None) == NoAuthPolicy()
    assert isinstance(load({"type": "none"}), NoAuthPolicy)


def test_a_jwt_policy_with_a_secret_from_the_environment() -> None:
    policy = load({**JWT, "hs256_secret_env": "JWT_SECRET"})
    assert isinstance(policy, JwtPolicy)
    assert policy.audience == ("gateway",)
    assert policy.hs256_secret == SECRET.encode()
    assert policy.allowed_algorithms == {"HS256"}
    assert (policy.leeway_seconds, policy.jwks_cache_seconds) == (30, 300)
    assert (policy.jwks_min_refresh_seconds, policy.forward_authorization) == (30, False)
    # The secret stays out of everything that might be printed.
    assert SECRET not in repr(policy)
    assert SECRET not in str(policy.model_dump())
    assert SECRET not in policy.model_dump_json()


def test_a_secret_file_loses_its_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n", encoding="utf-8")
    policy = load({**JWT, "hs256_secret_file": str(path)})
    assert policy.hs256_secret == SECRET.encode()


def test_a_jwks_policy_derives_its_algorithms() -> None:
    policy = load({**JWT, "jwks_url": "https://id.example/jwks", "audience": ["a", "b"]})
    assert policy.allowed_algorithms == {"RS256", "ES256"}
    assert policy.audience == ("a", "b")
    assert policy.hs256_secret is None
    limited = load({**JWT, "jwks_url": "http://id:8080/jwks", "algorithms": ["ES256"]})
    assert limited.allowed_algorithms == {"ES256"}


def test_the_os_environment_is_used_without_a_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_JWT_SECRET", SECRET)
    policy = JwtPolicy.model_validate({**JWT, "hs256_secret_env": "GATEWAY_TEST_JWT_SECRET"})
    assert policy.hs256_secret == SECRET.encode()


@pytest.mark.parametrize(
    ("changes", "location", "message"),
    [
        ({}, "auth.jwt", "jwt needs exactly one key source: hs256_secret_env, "),
        (
            {"hs256_secret_env": "JWT_SECRET", "jwks_url": "https://id/jwks"},
            "auth.jwt",
            "(given: hs256_secret_env, jwks_url)",
        ),
        (
            {"hs256_secret_env": "JWT_SECRET", "algorithms": ["HS256", "RS256"]},
            "auth.jwt",
            "algorithms: RS256 and ES256 need jwks_url; a shared secret verifies only HS256",
        ),
        (
            {"jwks_url": "https://id/jwks", "algorithms": ["HS256"]},
            "auth.jwt",
            "algorithms: HS256 needs hs256_secret_env or hs256_secret_file",
        ),
        ({"jwks_url": "https://id/jwks", "algorithms": []}, "auth.jwt.algorithms", "at least 1"),
        ({"jwks_url": "https://id/jwks", "algorithms": ["PS256"]}, "auth.jwt.algorithms.0", ""),
        (
            {"hs256_secret_env": "NOT_SET"},
            "auth.jwt",
            "hs256_secret_env: the environment variable NOT_SET is not set or empty",
        ),
        (
            {"hs256_secret_env": "SHORT"},
            "auth.jwt",
            "hs256_secret_env: the secret in the variable SHORT is 9 bytes; HS256 needs at "
            "least 32",
        ),
        ({"hs256_secret_env": "not a name"}, "auth.jwt.hs256_secret_env", "pattern"),
        (
            {"hs256_secret_file": "/nonexistent/secret"},
            "auth.jwt",
            "hs256_secret_file: cannot read /nonexistent/secret: No such file or directory",
        ),
        ({"jwks_url": "ftp://id/jwks"}, "auth.jwt.jwks_url", "http:// or https:// URL"),
        ({"jwks_url": "https://u:p@id/jwks"}, "auth.jwt.jwks_url", "credentials"),
        ({"jwks_url": "https://id:99999/jwks"}, "auth.jwt.jwks_url", "Port out of range"),
        ({"jwks_url": "https://id/jwks", "leeway_seconds": 301}, "auth.jwt.leeway_seconds", "300"),
        ({"jwks_url": "https://id/jwks", "leeway_seconds": -1}, "auth.jwt.leeway_seconds", "0"),
        (
            {"jwks_url": "https://id/jwks", "jwks_min_refresh_seconds": 0},
            "auth.jwt.jwks_min_refresh_seconds",
            "greater than or equal to 1",
        ),
        (
            {"jwks_url": "https://id/jwks", "jwks_cache_seconds": 10},
            "auth.jwt",
            "jwks_min_refresh_seconds must not exceed jwks_cache_seconds",
        ),
        (
            {"jwks_url": "https://id/jwks", "required_scopes": ['a"b']},
            "auth.jwt.required_scopes.0",
            "pattern",
        ),
        ({"jwks_url": "https://id/jwks", "audience": []}, "auth.jwt.audience", "at least 1"),
        ({"jwks_url": "https://id/jwks", "audience": ""}, "auth.jwt.audience.0", "at least 1"),
        ({"jwks_url": "https://id/jwks", "issuer": ""}, "auth.jwt.issuer", "at least 1"),
        ({"jwks_url": "https://id/jwks", "secret": "x"}, "auth.jwt.secret", "Extra inputs"),
    ],
)
def test_jwt_policy_mistakes(changes: dict[str, Any], location: str, message: str) -> None:
    where, what = failure({**JWT, **changes})
    assert where == location
    assert message in what


def test_a_pem_key_is_not_a_shared_secret(tmp_path: Path) -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    _, message = failure({**JWT, "hs256_secret_file": str(path)})
    assert message == (
        f"hs256_secret_file: {path} holds a PEM or SSH key, not a shared secret; "
        "publish public keys with jwks_url instead"
    )


def test_secrets_never_appear_in_errors() -> None:
    _, message = failure({**JWT, "hs256_secret_env": "SHORT"})
    assert "too-short" not in message


def test_an_api_key_policy(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# ops\nops:{key_digest(b'k')}\n", encoding="utf-8")
    policy = load({"type": "api_key", "keys_file": str(path)})
    assert isinstance(policy, ApiKeyPolicy)
    assert (policy.header, policy.header_name) == ("X-API-Key", b"x-api-key")
    assert [k.subject for k in policy.stored_keys] == ["ops"]
    from_env = load({"type": "api_key", "keys_env": "KEYS", "header": "X-Key"})
    assert len(from_env.stored_keys) == 1
    assert key_digest(b"k") not in repr(from_env)


@pytest.mark.parametrize(
    ("auth", "location", "message"),
    [
        ({}, "auth.api_key", "api_key needs exactly one of keys_file or keys_env"),
        (
            {"keys_file": "/k", "keys_env": "KEYS"},
            "auth.api_key",
            "api_key needs exactly one of keys_file or keys_env",
        ),
        ({"keys_env": "UNSET"}, "auth.api_key", "keys_env: the environment variable UNSET is"),
        ({"keys_file": "/nonexistent/k"}, "auth.api_key", "keys_file: cannot read /nonexistent/k"),
        ({"keys_env": "JWT_SECRET"}, "auth.api_key", "keys_env JWT_SECRET entry 1: expected"),
        ({"keys_env": "KEYS", "header": "Connection"}, "auth.api_key.header", "cannot carry"),
        ({"keys_env": "KEYS", "header": "X-Auth-Key"}, "auth.api_key.header", "X-Auth-*"),
        ({"keys_env": "KEYS", "header": "X API Key"}, "auth.api_key.header", "pattern"),
        ({"keys_env": "KEYS", "required_scopes": ["a"]}, "auth.api_key.required_scopes", "Extra"),
    ],
)
def test_api_key_policy_mistakes(auth: dict[str, Any], location: str, message: str) -> None:
    where, what = failure({"type": "api_key", **auth})
    assert where == location
    assert message in what
    assert SECRET not in what  # keys_env JWT_SECRET: its value is never quoted


def test_a_key_file_names_its_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# ok\n{key_digest(b'k')}\nplain-text-key\n", encoding="utf-8")
    _, message = failure({"type": "api_key", "keys_file": str(path)})
    assert message.startswith(f"keys_file {path} line 3: expected [name:]<64 hex digits")
    assert "plain-text-key" not in message


@pytest.mark.parametrize("auth", [{"type": "oauth"}, {"issuer": "x"}, {"type": "none", "x": 1}])
def test_unknown_types_and_fields(auth: dict[str, Any]) -> None:
    where, _ = failure(auth)
    assert where.startswith("auth")
