from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.forwarded import client_ip, forwarded_for_values, parse_address

PEER = "10.0.0.9"  # the nearest proxy, or the client itself with no proxies


# --- parse_address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("  203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:8080", "203.0.113.7"),
        ("2001:DB8::0:1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ('"[2001:db8::1]:443"', "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("unknown", None),
        ("", None),
        ("_hidden", None),
        ("203.0.113.300", None),
        ("[2001:db8::1", None),
        ("1" * 100, None),
        ("example.com", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    assert parse_address(text) == expected


def test_forwarded_for_values_keeps_every_header_in_order() -> None:
    headers = [
        (b"host", b"gw"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"3.3.3.3"),
    ]
    assert forwarded_for_values(headers) == ["1.1.1.1, 2.2.2.2", "3.3.3.3"]


# --- no trusted proxies -----------------------------------------------------------------


def test_zero_hops_is_the_peer_whatever_the_header_says() -> None:
    assert client_ip(PEER, ["198.51.100.1"], 0) == PEER
    assert client_ip(PEER, [], 0) == PEER


def test_the_peer_is_made_canonical() -> None:
    assert client_ip("::ffff:10.0.0.9", [], 0) == PEER
    assert client_ip("2001:DB8::1", [], 0) == "2001:db8::1"


def test_a_peer_that_is_not_an_address_is_kept_and_none_is_unknown() -> None:
    assert client_ip("unix-socket-peer", [], 0) == "unix-socket-peer"
    assert client_ip(None, [], 0) == "unknown"
    assert client_ip(None, [], 1) == "unknown"


# --- one trusted proxy (an ingress or a cloud load balancer) ----------------------------


def test_one_hop_is_the_address_the_proxy_appended() -> None:
    # The client really is 203.0.113.7; the ingress appended it.
    assert client_ip(PEER, ["203.0.113.7"], 1) == "203.0.113.7"


def test_one_hop_ignores_a_spoofed_prefix() -> None:
    # The client sent "X-Forwarded-For: 6.6.6.6, 7.7.7.7"; the ingress appended its address.
    assert client_ip(PEER, ["6.6.6.6, 7.7.7.7, 203.0.113.7"], 1) == "203.0.113.7"


def test_one_hop_with_the_spoof_in_its_own_header_line() -> None:
    # Several header lines form one list, in order (RFC 9110 section 5.3).
    assert client_ip(PEER, ["6.6.6.6", "203.0.113.7"], 1) == "203.0.113.7"


def test_one_hop_ignores_garbage_the_client_prepended() -> None:
    assert client_ip(PEER, ["not-an-ip, <script>, ,203.0.113.7"], 1) == "203.0.113.7"


def test_one_hop_without_the_header_is_the_peer() -> None:
    # A caller that did not come through the proxy (an in-cluster client, a probe).
    assert client_ip(PEER, [], 1) == PEER


# --- two trusted proxies (CDN -> load balancer -> gateway) ------------------------------


def test_two_hops_is_the_second_address_from_the_right() -> None:
    # The CDN appended the client, the load balancer appended the CDN's edge address.
    assert client_ip(PEER, ["203.0.113.7, 192.0.2.50"], 2) == "203.0.113.7"


def test_two_hops_ignore_a_spoofed_prefix() -> None:
    values = ["1.2.3.4, 5.6.7.8, 203.0.113.7, 192.0.2.50"]
    assert client_ip(PEER, values, 2) == "203.0.113.7"


def test_a_spoofed_address_never_wins_however_many_are_sent() -> None:
    spoofed = ", ".join(f"6.6.6.{i}" for i in range(50))
    assert client_ip(PEER, [spoofed + ", 203.0.113.7, 192.0.2.50"], 2) == "203.0.113.7"


def test_a_shorter_list_than_the_hops_gives_the_leftmost_entry() -> None:
    # Came through only the nearest proxy: every entry was appended by a trusted hop.
    assert client_ip(PEER, ["192.0.2.50"], 2) == "192.0.2.50"
    assert client_ip(PEER, ["203.0.113.7, 192.0.2.50"], 5) == "203.0.113.7"


def test_garbage_in_the_trusted_part_falls_back_rightwards_never_left() -> None:
    # The entry in the client's position is garbage: never step left into what the
    # client wrote (6.6.6.6); use the nearest trusted address to its right instead.
    assert client_ip(PEER, ["6.6.6.6, unknown, 192.0.2.50"], 2) == "192.0.2.50"
    assert client_ip(PEER, ["6.6.6.6, unknown"], 1) == PEER
    assert client_ip(PEER, ["6.6.6.6, unknown, garbage"], 2) == PEER


def test_ports_and_brackets_from_proxies_are_understood() -> None:
    assert client_ip(PEER, ["[2001:db8::7]:51000, 192.0.2.50:443"], 2) == "2001:db8::7"


_addresses = st.ip_addresses(v=4).map(str) | st.ip_addresses(v=6).map(str)
_junk = st.text(max_size=20).filter(lambda s: "," not in s)


@given(
    client_part=st.lists(_addresses | _junk, max_size=8),
    trusted_part=st.lists(_addresses, min_size=1, max_size=4),
)
def test_whatever_the_client_sends_only_trusted_entries_are_used(
    client_part: list[str], trusted_part: list[str]
) -> None:
    hops = len(trusted_part)
    header = ", ".join([*client_part, *trusted_part])
    expected = ipaddress.ip_address(trusted_part[0])
    if isinstance(expected, ipaddress.IPv6Address) and expected.ipv4_mapped is not None:
        expected = expected.ipv4_mapped
    assert client_ip(PEER, [header], hops) == str(expected)
