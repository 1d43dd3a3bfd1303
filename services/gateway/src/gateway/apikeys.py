"""API keys, stored only as SHA-256 digests and checked in constant time.

The gateway never holds a key in the clear. A key file (or environment variable) lists
the hex SHA-256 digest of each key, one entry per line, optionally named:

    # comments and blank lines are ignored; so is anything after a '#'
    ci-bot:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae

Make a digest with `printf %s "$KEY" | sha256sum`. The name becomes the subject the
upstream sees in `X-Auth-Subject`; an unnamed key is `api-key:<first 8 hex digits>`.
Two keys may share a name, which is how a client's key is rotated without downtime.

A presented key is hashed, then compared with `hmac.compare_digest` against every stored
digest, all of them every time: neither timing nor the number of comparisons says which
key matched, or whether one did. Comparing digests rather than keys also means the time
taken does not depend on the length of what the client sent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_ENTRY = re.compile(r"(?:(?P<name>[^:]*):)?(?P<digest>[^:]*)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class StoredKey:
    digest: bytes = field(repr=False)  # the 32 raw bytes of the SHA-256 digest
    subject: str


def key_digest(key: bytes) -> str:
    """The hex digest to store for `key`: what `sha256sum` prints."""
    return hashlib.sha256(key).hexdigest()


def parse_keys(entries: Iterable[str], *, source: str, unit: str = "line") -> tuple[StoredKey, ...]:
    """Stored keys from `entries` (lines of a file, or items of a variable).

    `source` names where they came from; a bad entry raises ValueError naming the
    source and the entry's number (`line 3`, `entry 2`), never echoing the entry itself:
    it might be a key pasted in the clear by mistake.
    """
    keys: list[StoredKey] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(entries, start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        where = f"{source} {unit} {number}"
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise ValueError(f"{where}: expected [name:]<64 hex digits of a SHA-256 digest>")
        name, digest_hex = match.group("name"), match.group("digest").strip()
        if not _HEX_DIGEST.fullmatch(digest_hex):
            raise ValueError(
                f"{where}: expected [name:]<64 hex digits of a SHA-256 digest>; "
                "store the key's digest (printf %s KEY | sha256sum), not the key"
            )
        if name is not None:
            name = name.strip()
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"{where}: a name is 1-64 of A-Z a-z 0-9 . _ @ - and starts with a "
                    "letter or digit"
                )
        digest = bytes.fromhex(digest_hex)
        if digest in seen:
            raise ValueError(f"{where}: the same key as {unit} {seen[digest]}")
        seen[digest] = number
        keys.append(StoredKey(digest, name or f"api-key:{digest_hex[:8].lower()}"))
    if not keys:
        raise ValueError(f"{source} holds no keys")
    return tuple(keys)


def split_variable(value: str) -> list[str]:
    """The entries of an environment variable: separated by newlines or commas."""
    return re.split(r"[,\n]", value)


class ApiKeyStore:
    """The configured keys of one route."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[StoredKey]) -> None:
        if not keys:
            raise ValueError("an API key store needs at least one key")
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def match(self, presented: bytes) -> StoredKey | None:
        """The stored key equal to `presented`, after comparing against all of them."""
        digest = hashlib.sha256(presented).digest()
        found: StoredKey | None = None
        for key in self._keys:
            # Looked up on the module at call time, so tests can count the calls.
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found
