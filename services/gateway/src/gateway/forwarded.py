"""Who the client is, when trusted proxies stand between it and the gateway.

Threat model. `X-Forwarded-For` is a list every hop appends to, and the client writes
the start of it: it can send any number of made-up addresses, valid or not. Only the
entries appended by proxies we run are trustworthy, and those are always the rightmost
ones. With `trusted_hops = N` (the number of proxies in front of the gateway that each
append the address they saw, e.g. 1 for a cloud load balancer or an ingress
controller), the client is the N-th address from the right; with 0 it is the TCP peer
and the header is ignored entirely.

    client 203.0.113.7 sends  X-Forwarded-For: 6.6.6.6          (a lie)
    ingress appends the peer  X-Forwarded-For: 6.6.6.6, 203.0.113.7
    gateway, trusted_hops=1   -> 203.0.113.7; the lie is left of the trusted part

This holds only if the gateway cannot be reached except through those N proxies (a
NetworkPolicy, a private Service); a client that reaches the gateway directly chooses
every entry. Set N too high and clients choose their own address; too low and every
client looks like the proxy.

When the list is shorter than N (a request that came through fewer proxies, such as an
in-cluster caller), every entry is one a trusted hop appended, so the leftmost is used;
with no entries at all, the peer. An entry in the trusted part that is not an IP
address is never skipped over, since that would move the trust boundary one step into
the part the client wrote: the nearest valid address to its right (a proxy, or the
peer) is used instead, which errs towards lumping clients together, never towards
believing them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

UNKNOWN = "unknown"


def forwarded_for_values(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The values of every `X-Forwarded-For` header in ASGI `headers`, in order."""
    return [value.decode("latin-1") for name, value in headers if name == b"x-forwarded-for"]


@lru_cache(maxsize=8192)  # bounded; ipaddress costs microseconds per call, a hit does not
def parse_address(text: str) -> str | None:
    """`text` as a canonical IP address, or None if it is not one.

    Accepts what proxies are known to write besides a bare address: a port
    (`192.0.2.1:8080`, `[2001:db8::1]:8080`), brackets, quotes. IPv4-mapped IPv6
    (`::ffff:192.0.2.1`, as dual-stack sockets report IPv4 peers) becomes plain IPv4,
    so one client never counts as two.
    """
    text = text.strip().strip('"')
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def client_ip(peer: str | None, x_forwarded_for_values: list[str], trusted_hops: int) -> str:
    """The client's address, trusting exactly `trusted_hops` proxies (see the module doc).

    `peer` is the TCP peer (ASGI `scope["client"][0]`, None on a Unix socket) and
    `x_forwarded_for_values` every `X-Forwarded-For` header value in order; several
    headers are one comma-separated list (RFC 9110 section 5.3). Returns a canonical
    address, or the peer as given if it is not an address, or "unknown".
    """
    peer_address = (parse_address(peer) or peer) if peer else UNKNOWN
    if trusted_hops <= 0 or not x_forwarded_for_values:
        return peer_address
    # The trusted part: the last `trusted_hops` entries, furthest first. Whatever the
    # client put before them is never even split apart.
    trusted = ",".join(x_forwarded_for_values).rsplit(",", trusted_hops)[-trusted_hops:]
    # The client is the furthest trusted entry; if that is garbage, the nearest valid
    # entry to its right, then the peer: never anything further left.
    for entry in trusted:
        address = parse_address(entry)
        if address is not None:
            return address
    return peer_address
