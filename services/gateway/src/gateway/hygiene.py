"""Requests the gateway refuses before anything reaches an upstream, and slow bodies.

uvicorn's parser (httptools, strict llhttp) already refuses most malformed requests
with 400 before the app is called: Content-Length with Transfer-Encoding, a
Transfer-Encoding whose last coding is not chunked (`xchunked`, duplicated), conflicting
Content-Lengths, CR, LF or NUL in a header, obs-fold, and methods it does not know.
`tests/live/test_smuggling.py` proves each against a real server. These checks cover
what gets through it (and through any other server the app might run under):

    431 headers-too-large   more header fields, or more bytes of names and values,
                            than the settings allow
    400 bad-header          a value with a control character other than HTAB, or a name
                            that is not an RFC 9110 token
    400 bad-method          a method that is not an RFC 9110 token
    400 bad-framing         Transfer-Encoding on an HTTP/1.0 request (RFC 9112 section
                            6.1), or more than one Host (RFC 9112 section 3.2)
    408 body-timeout        a request body that stops arriving for `client_body_timeout`,
                            or is not whole within the route's total timeout

The request head is also frozen: uvicorn appends chunked trailer fields to the very
list the scope holds, so without a copy a header could appear after it was checked.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from starlette.types import Message, Receive, Scope

from gateway.errors import BadRequest, GatewayError

# RFC 9110 section 5.6.2.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5: field-content is VCHAR, SP, HTAB and obs-text; nothing else.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_CLOSE = [(b"connection", b"close")]


class HeadersTooLarge(GatewayError):
    status = 431
    slug = "headers-too-large"


class BadHeader(BadRequest):
    slug = "bad-header"


class BadMethod(BadRequest):
    slug = "bad-method"


class BadFraming(BadRequest):
    slug = "bad-framing"


class BodyTimeout(GatewayError):
    """The client stopped sending its body. The connection is closed after the answer:
    the rest of that body, should it come, must not be read as the next request."""

    status = 408
    slug = "body-timeout"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers=list(_CLOSE))


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_header_count: int
    max_header_bytes: int
    body_timeout: float  # seconds of silence while a body is due


def check_request(scope: Scope, limits: RequestLimits) -> GatewayError | None:
    """Why the request in `scope` must be refused, or None. Also freezes its headers.

    About 2 µs for a typical head: the per-header work is done on joined bytes, by
    the regex engine, instead of in a Python loop.
    """
    headers = scope["headers"] = list(scope["headers"])
    if len(headers) > limits.max_header_count:
        return HeadersTooLarge(f"more than {limits.max_header_count} header fields")
    names = [name for name, _ in headers]
    joined_names = b"".join(names)
    joined_values = b"\t".join([value for _, value in headers])
    size = len(joined_names) + len(joined_values) - max(len(headers) - 1, 0)  # minus tabs
    if size > limits.max_header_bytes:
        return HeadersTooLarge(f"headers larger than {limits.max_header_bytes} bytes")
    if _CONTROL.search(joined_values) is not None:
        return BadHeader("a header value holds a control character")
    if headers and (_TOKEN.fullmatch(joined_names) is None or b"" in names):
        return BadHeader("a header name is not a token")
    return _line_and_framing(scope, names)


def _line_and_framing(scope: Scope, names: list[bytes]) -> GatewayError | None:
    method = scope["method"]
    if method not in _COMMON_METHODS and _TOKEN.fullmatch(method.encode("latin-1")) is None:
        return BadMethod("the method is not a token")
    if names.count(b"host") > 1:
        return BadFraming("more than one Host header")
    if scope.get("http_version") == "1.0" and b"transfer-encoding" in names:
        return BadFraming("Transfer-Encoding on an HTTP/1.0 request")
    return None


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (Content-Length or Transfer-Encoding)."""
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"])


def with_body_timeout(receive: Receive, seconds: float, *, total: float) -> Receive:
    """`receive`, raising `BodyTimeout` when a piece of the body takes over `seconds`, or
    the whole body over `total` (the route's total timeout) from the first call.

    Only while the body lasts: after its end, `receive` waits for a disconnect, which
    may take as long as the response does, so it is passed through untimed. Time the
    app spends not asking (the upstream is slow to read) counts only towards `total`,
    which the upstream exchange is bounded by anyway.
    """
    finished = False
    deadline: float | None = None

    async def receive_in_time() -> Message:
        nonlocal finished, deadline
        if finished:
            return await receive()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is None:
            deadline = now + total
        idle = now + seconds < deadline
        try:
            async with asyncio.timeout_at(min(now + seconds, deadline)):
                message = await receive()
        except TimeoutError:
            finished = True
            if idle:
                raise BodyTimeout(f"no request body received for {seconds:g} s") from None
            raise BodyTimeout(f"the request body took longer than {total:g} s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            finished = True
        return message

    return receive_in_time
