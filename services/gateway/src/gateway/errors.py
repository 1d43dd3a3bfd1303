"""The errors the gateway makes itself, and the one place they become HTTP.

    GatewayError                 every error below carries its status and problem type
    ├── BadRequest        400    a request the gateway refuses to forward
    │   └── BadPath       400    a path that could climb out of a route's prefix
    ├── BodyTooLarge      413    more body than the route allows
    ├── ClientGone        499    the client went away; nothing is sent back
    └── UpstreamError            the upstream failed us
        ├── UpstreamUnreachable  502  no connection could be made
        ├── UpstreamBroken       502  the connection broke or the reply was not HTTP
        └── UpstreamTimeout      504  no answer within the route's timeouts

Upstream responses are never errors here: a 503 from the upstream passes through as is.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    slug: str = "gateway-error"

    def __init__(self, detail: str, *, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # Sent with the problem response, e.g. WWW-Authenticate or Retry-After.
        self.headers = headers or []


class BadRequest(GatewayError):
    status = 400
    slug = "bad-request"


class BadPath(BadRequest):
    slug = "bad-path"


class BodyTooLarge(GatewayError):
    status = 413
    slug = "body-too-large"


class ClientGone(GatewayError):
    """Not sent to anyone; 499 is what the access log shows, as nginx does."""

    status = 499
    slug = "client-closed-request"


class UpstreamError(GatewayError):
    status = 502
    slug = "upstream-error"


class UpstreamUnreachable(UpstreamError):
    slug = "upstream-unreachable"


class UpstreamBroken(UpstreamError):
    slug = "upstream-broken"


class UpstreamTimeout(UpstreamError):
    status = 504
    slug = "upstream-timeout"


def reason(exc: BaseException) -> str:
    """A low-level error as one short line for a problem's detail (whitespace folded)."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]
