"""Which headers cross the gateway, in each direction, and what it adds.

Hop-by-hop headers describe one connection, not the message (RFC 9110 section 7.6.1),
so they stop here both ways: the fixed list and every header `Connection` names.
Towards the upstream the gateway sets X-Forwarded-For/-Proto/-Host and X-Request-ID
itself, replacing whatever a client claimed for Proto, Host and the request id.
"""

from __future__ import annotations

from collections.abc import Iterable

RawHeaders = Iterable[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway from what it knows, never copied from the client. `expect` is
# answered by the server in front of us; `host` comes from the upstream URL.
_REPLACED_TOWARDS_UPSTREAM = frozenset(
    {
        b"host",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
    }
)

_TRACE_CONTEXT = frozenset({b"traceparent", b"tracestate"})


def connection_named(headers: RawHeaders) -> frozenset[bytes]:
    """Lower-case names listed in any Connection header."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(named)


def upstream_request_headers(
    headers: list[tuple[bytes, bytes]],
    *,
    client_ip: str | None,
    scheme: str,
    request_id: str,
    own_trace_context: bool = False,
) -> list[tuple[str, str]]:
    """The headers to send upstream for a client request with `headers` (ASGI, lower-case).

    With `own_trace_context` the client's `traceparent`/`tracestate` are dropped: the
    gateway's own client span will be injected in their place.
    """
    dropped = HOP_BY_HOP | _REPLACED_TOWARDS_UPSTREAM
    if own_trace_context:
        dropped = dropped | _TRACE_CONTEXT
    if any(name == b"connection" for name, _ in headers):
        dropped = dropped | connection_named(headers)
    out: list[tuple[str, str]] = []
    forwarded_for: list[str] = []
    host = ""
    for name, value in headers:
        if name not in dropped:
            out.append((name.decode("latin-1"), value.decode("latin-1")))
        elif name == b"x-forwarded-for":
            forwarded_for.append(value.decode("latin-1").strip())
        elif name == b"host":
            host = value.decode("latin-1")
    if client_ip:
        forwarded_for.append(client_ip)
    if forwarded_for:
        out.append(("x-forwarded-for", ", ".join(f for f in forwarded_for if f)))
    out.append(("x-forwarded-proto", scheme))
    if host:
        out.append(("x-forwarded-host", host))
    out.append(("x-request-id", request_id))
    return out


def downstream_response_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones, names lower-cased for ASGI."""
    lowered = [(name.lower(), value) for name, value in headers]
    dropped = HOP_BY_HOP
    if any(name == b"connection" for name, _ in lowered):
        dropped = dropped | connection_named(lowered)
    return [(name, value) for name, value in lowered if name not in dropped]
