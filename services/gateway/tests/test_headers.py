from __future__ import annotations

import pytest

from gateway.headers import (
    HOP_BY_HOP,
    connection_named,
    downstream_response_headers,
    upstream_request_headers,
)


def towards_upstream(
    headers: list[tuple[bytes, bytes]],
    *,
    client_ip: str | None = "10.1.1.1",
    scheme: str = "https",
    request_id: str = "rid-1",
) -> list[tuple[str, str]]:
    return upstream_request_headers(
        headers, client_ip=client_ip, scheme=scheme, request_id=request_id
    )


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in headers]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n == name]


def test_connection_named_is_case_insensitive_and_tolerant() -> None:
    headers = [(b"Connection", b" Keep-Alive , X-Secret,,"), (b"connection", b"x-other")]
    assert connection_named(headers) == {b"keep-alive", b"x-secret", b"x-other"}


# --- towards the upstream --------------------------------------------------------------


def test_end_to_end_headers_pass_in_order() -> None:
    out = towards_upstream(
        [
            (b"accept", b"application/json"),
            (b"x-custom", b"1"),
            (b"x-custom", b"2"),
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            (b"authorization", b"Bearer t"),
        ]
    )
    assert out[:5] == [
        ("accept", "application/json"),
        ("x-custom", "1"),
        ("x-custom", "2"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("authorization", "Bearer t"),
    ]


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_headers_stop_at_the_gateway(name: bytes) -> None:
    out = towards_upstream([(name, b"x"), (b"x-keep", b"1")])
    assert name.decode() not in names(out)
    assert ("x-keep", "1") in out


def test_headers_named_in_connection_stop_at_the_gateway() -> None:
    out = towards_upstream(
        [
            (b"connection", b"X-Secret, keep-alive"),
            (b"x-secret", b"do not forward"),
            (b"keep-alive", b"timeout=5"),
            (b"x-public", b"forward"),
        ]
    )
    assert "x-secret" not in names(out)
    assert "keep-alive" not in names(out)
    assert "connection" not in names(out)
    assert ("x-public", "forward") in out


def test_x_forwarded_for_is_appended() -> None:
    out = towards_upstream(
        [(b"x-forwarded-for", b"203.0.113.7, 10.0.0.1"), (b"x-forwarded-for", b" 10.0.0.2 ")]
    )
    assert values(out, "x-forwarded-for") == ["203.0.113.7, 10.0.0.1, 10.0.0.2, 10.1.1.1"]


def test_x_forwarded_for_starts_with_the_client() -> None:
    assert values(towards_upstream([]), "x-forwarded-for") == ["10.1.1.1"]


def test_without_a_client_address_the_chain_is_kept() -> None:
    out = towards_upstream([(b"x-forwarded-for", b"203.0.113.7")], client_ip=None)
    assert values(out, "x-forwarded-for") == ["203.0.113.7"]
    assert "x-forwarded-for" not in names(towards_upstream([], client_ip=None))


def test_proto_host_and_request_id_are_set_by_the_gateway() -> None:
    out = towards_upstream(
        [
            (b"host", b"gateway.example:8080"),
            (b"x-forwarded-proto", b"gopher"),
            (b"x-forwarded-host", b"evil.example"),
            (b"x-request-id", b"client-chosen"),
            (b"expect", b"100-continue"),
        ],
        scheme="http",
        request_id="gateway-chosen",
    )
    assert values(out, "x-forwarded-proto") == ["http"]
    assert values(out, "x-forwarded-host") == ["gateway.example:8080"]
    assert values(out, "x-request-id") == ["gateway-chosen"]
    assert "host" not in names(out)  # the upstream URL decides Host
    assert "expect" not in names(out)


def test_no_host_means_no_forwarded_host() -> None:
    out = towards_upstream([(b"x-forwarded-host", b"evil.example")])
    assert "x-forwarded-host" not in names(out)


def test_values_are_latin1_round_tripped() -> None:
    out = towards_upstream([(b"x-raw", "café".encode("latin-1"))])
    assert ("x-raw", "café") in out


# --- towards the client ----------------------------------------------------------------


def test_response_hop_by_hop_headers_are_removed_case_insensitively() -> None:
    out = downstream_response_headers(
        [
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"close, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"Trailer", b"x-checksum"),
            (b"Upgrade", b"h2c"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Encoding", b"gzip"),
        ]
    )
    assert out == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-encoding", b"gzip"),
    ]


def test_response_headers_without_connection_pass_whole() -> None:
    headers = [(b"x-request-id", b"up-1"), (b"retry-after", b"3")]
    assert downstream_response_headers(headers) == headers
