"""Where an HTTP/1.1 request goes, and its head as the bytes that go on the wire.

The head is written in one piece: request line, Host (from the URL, port left out when
it is the scheme's default), the caller's headers byte for byte (latin-1), then the
framing the body needs. A header that could change the message's meaning on the way,
a name that is not a token or anything containing CR, LF or NUL, is refused with a
`ValueError` before a byte is sent: the gateway forwards messages, it never lets one
field split into two.

Framing belongs to the client: a caller's Transfer-Encoding is refused, and a
Content-Length it gives must agree with a body held whole. A streamed body keeps the
caller's Content-Length (sent exactly that long) or else goes chunked.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Methods whose bodiless requests still say `content-length: 0`, as HTTP clients do:
# some servers refuse a POST without any framing (411).
_EMPTY_BODY_LENGTH = frozenset({"POST", "PUT", "PATCH"})
_SPECIAL_SIZES = frozenset({len("host"), len("content-length"), len("transfer-encoding")})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Names already checked; header names repeat from request to request.
_TOKENS: set[str] = set()
_TOKENS_MAX = 4096


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host and port: what a pooled connection is for."""

    scheme: str
    host: str  # for DNS and TLS: IDNA-encoded, IPv6 without brackets
    port: int
    host_header: str  # the Host value: brackets for IPv6, port only when not the default

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def split_url(url: str) -> tuple[Origin, str]:
    """The origin of an absolute URL and its request target (path and query, as given)."""
    start = url.find("://")
    if start < 0:
        raise ValueError(f"not an absolute URL: {url[:100]!r}")
    end = len(url)
    for mark in "/?":
        at = url.find(mark, start + 3)
        if 0 <= at < end:
            end = at
    target = url[end:]
    if not target.startswith("/"):
        target = "/" + target
    return _origin(url[:end]), target


@lru_cache(maxsize=256)
def _origin(base: str) -> Origin:
    parts = urlsplit(base)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL with a host: {base[:100]!r}")
    host = parts.hostname
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    port = parts.port or _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        shown = f"{shown}:{port}"
    return Origin(scheme, host, port, shown)


def encode_head(
    method: str,
    target: str,
    host: str,
    headers: list[tuple[str, str]],
    body: bytes | AsyncIterable[bytes] | None,
) -> tuple[bytes, int | None]:
    """The request head, and for a streamed body its declared length (None: chunked).

    Raises ValueError for anything that would not go on the wire exactly as given.
    """
    if method not in _TOKENS:
        _check_token(method)
    if " " in target:
        raise ValueError("the request target contains a space")
    parts = [method, " ", target, " HTTP/1.1\r\nhost: ", host, "\r\n"]
    lines = 2
    length: str | None = None
    for name, value in headers:
        if name not in _TOKENS:
            _check_token(name)
        size = len(name)
        if size in _SPECIAL_SIZES:
            lower = name.lower()
            if lower == "content-length":
                if length is not None and value != length:
                    raise ValueError("conflicting content-length headers")
                length = value
            elif lower == "host":
                if not parts[4]:
                    raise ValueError("more than one host header")
                parts[3] = " HTTP/1.1\r\n"  # the caller's Host replaces the URL's
                parts[4] = parts[5] = ""
                lines -= 1
            elif lower == "transfer-encoding":
                raise ValueError("transfer-encoding is the client's to set")
        parts += (name, ": ", value, "\r\n")
        lines += 1
    framing, declared = _framing(method, body, length)
    if framing:
        parts.append(framing)
        lines += 1
    parts.append("\r\n")
    text = "".join(parts)
    # Every CR and LF must be one we put there: a value holding one would end the field.
    lines += 1
    if text.count("\n") != lines or text.count("\r") != lines or "\x00" in text:
        raise ValueError("a header or the target contains CR, LF or NUL")
    return text.encode("latin-1"), declared


def _framing(
    method: str, body: bytes | AsyncIterable[bytes] | None, length: str | None
) -> tuple[str, int | None]:
    """The framing header to add (or ""), and the length declared for a streamed body."""
    declared: int | None = None
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise ValueError(f"invalid content-length {length[:20]!r}")
        declared = int(length)
    if body is None:
        if declared:
            raise ValueError("a content-length without a body")
        if declared is None and method in _EMPTY_BODY_LENGTH:
            return "content-length: 0\r\n", None
        return "", None
    if isinstance(body, bytes):
        if declared is None:
            return f"content-length: {len(body)}\r\n", None
        if declared != len(body):
            raise ValueError("the content-length does not match the body")
        return "", None
    if declared is None:
        return "transfer-encoding: chunked\r\n", None
    return "", declared


def _check_token(name: str) -> None:
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(f"not a valid header name or method: {name[:40]!r}")
    if len(_TOKENS) >= _TOKENS_MAX:
        _TOKENS.clear()
    _TOKENS.add(name)
