"""What the policies suite adds to tests/harness: a real Redis, a JWKS server, keys and
tokens, the stack, and faults injected into the mock.

Everything listens on 127.0.0.1 on a free port, every wait has a deadline, and every
process is stopped by the PID it was started with (never by name).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from tests.harness.loopback_server import LoopbackServer, QuietHandler
from tests.harness.processes import START_TIMEOUT, Service, free_port, stop_process, wait_for

ROUTES_FILE = Path(__file__).with_name("routes.yaml")
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_INSTALL_HINT = "install it with: apt-get update && apt-get install -y redis-server"

# What the route file's JWT routes expect (tests/policies/routes.yaml).
ISSUER = "https://issuer.policies.test/"
AUDIENCE = "policies-gateway"
REQUIRED_SCOPE = "orders:read"
JWK_SET = "application/jwk-set+json"


def unique(prefix: str) -> str:
    """A fresh key for the mock's /flaky counters (they are never reset)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """Debian's redis-server on loopback, without persistence; stoppable and restartable."""

    def __init__(self, workdir: Path) -> None:
        if not os.access(REDIS_SERVER, os.X_OK):
            raise AssertionError(
                f"{REDIS_SERVER} is missing: the rate-limit tests need a real Redis; "
                + REDIS_INSTALL_HINT
            )
        self.workdir = workdir
        self.port = free_port()
        self.log_file = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on `self.port` (the same port again after `stop`) and wait for PING."""
        # Loopback only, and nothing written to disk: the buckets live as long as the test.
        command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for("redis-server to answer PING", self._ping, timeout=START_TIMEOUT, interval=0.05)

    def _ping(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise AssertionError(f"redis-server exited with {self.process.returncode}: {tail}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process)
        self.process = None


# --------------------------------------------------------------------------- keys and tokens


@dataclass(frozen=True)
class RsaKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str) -> RsaKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: Mapping[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            dict(claims), self.private, algorithm="RS256", headers={"kid": kid or self.kid}
        )


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims the JWT routes accept, valid for 5 minutes; None removes a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "scope": f"{REQUIRED_SCOPE} profile",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def handmade_token(header: Mapping[str, Any], payload: Mapping[str, Any], key: bytes) -> str:
    """A JWS made by hand: PyJWT refuses to sign `none`, or HS256 with a PEM, on purpose."""
    signing_input = (
        _b64(json.dumps(dict(header)).encode()) + "." + _b64(json.dumps(dict(payload)).encode())
    )
    if header.get("alg") == "none":
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def new_hs256_secret() -> str:
    return secrets.token_urlsafe(48)


# --------------------------------------------------------------------------- JWKS server


class JwksServer(LoopbackServer):
    """Serves one JWKS document at /jwks.json that the test can replace at any time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._document: bytes = b'{"keys": []}'
        self.fetches = 0
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.answer(404, b"{}", JWK_SET)
                    return
                with server._lock:
                    server.fetches += 1
                    body = server._document
                self.answer(200, body, JWK_SET)

        super().__init__(Handler)
        self.url = self.origin + "/jwks.json"

    def publish(self, *keys: RsaKey) -> None:
        document = json.dumps({"keys": [k.jwk() for k in keys]}).encode()
        with self._lock:
            self._document = document

    def fetch_count(self) -> int:
        with self._lock:
            return self.fetches


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    gateway: Service
    mock: Service
    redis: RedisServer
    jwks: JwksServer
    hs256_secret: str
    api_key: str
    rsa_keys: dict[str, RsaKey]  # the keys the JWKS server may publish, by kid
    workdir: Path

    @property
    def upstream(self) -> str:
        """The mock's origin, as the gateway's breaker and budget metrics label it."""
        return self.mock.url


@contextlib.contextmanager
def injected_faults(mock: Service, **faults: float) -> Iterator[None]:
    """Every worker of the mock fails or slows requests as `faults` says, until the end.

    Set and cleared on the mock directly (its /admin is never faulted itself).
    """
    response = httpx.put(mock.url + "/admin/faults", json=faults, timeout=10)
    assert response.status_code == 200, response.text[:300]
    try:
        yield
    finally:
        response = httpx.delete(mock.url + "/admin/faults", timeout=10)
        assert response.status_code == 200, response.text[:300]
