"""Headers across the gateway: hop-by-hop ones stop, forwarding ones are set, ids follow.

Guards RFC 9110's hop-by-hop rule (the fixed list and every header `Connection` names
never reach the upstream), X-Forwarded-For/-Proto/-Host, the upstream's own Host, and
X-Request-ID: kept when valid, replaced when not, always on the response (errors too)
and always the id the upstream saw.
"""

from __future__ import annotations

import ipaddress
import uuid

import httpx
import pytest

from .support import BASE_URL, VALID_REQUEST_ID, assert_problem, echo, raw_request

HOP_BY_HOP = (
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
)


def assert_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        pytest.fail(f"{value!r} is not an IP address")


def test_hop_by_hop_headers_never_reach_the_upstream() -> None:
    # Raw, so that no client library adds, merges or refuses any of these.
    response = raw_request(
        "GET",
        "/mock/echo",
        headers={
            "Connection": "keep-alive, X-E2E-Hop",
            "X-E2E-Hop": "must-not-arrive",
            "Keep-Alive": "timeout=5, max=100",
            "Proxy-Authorization": "Basic ZTJlOnNlY3JldA==",
            "Proxy-Connection": "keep-alive",
            "TE": "trailers",
            "Trailer": "X-E2E-Trailer",
            "Upgrade": "e2e-proto/1",
            "X-E2E-Kept": "arrives",
        },
    )
    seen = echo(response)["headers"]
    assert seen.get("x-e2e-kept") == "arrives", seen
    dropped = [name for name in (*HOP_BY_HOP, "x-e2e-hop") if name != "connection"]
    leaked = {name: seen[name] for name in dropped if name in seen}
    assert not leaked, f"hop-by-hop headers reached the mock: {leaked}"
    # The gateway's own client may manage its connection with its own header, but the
    # client's Connection header, and what it names, stop at the gateway.
    assert "x-e2e-hop" not in seen.get("connection", "").lower(), seen


def test_every_header_named_by_connection_is_dropped() -> None:
    response = raw_request(
        "GET",
        "/mock/echo",
        headers={
            "Connection": " X-E2E-One ,x-e2e-TWO,  keep-alive",
            "X-E2E-One": "1",
            "x-e2e-two": "2",
            "X-E2E-Three": "3",
        },
    )
    seen = echo(response)["headers"]
    assert "x-e2e-one" not in seen, seen
    assert "x-e2e-two" not in seen, seen
    assert seen.get("x-e2e-three") == "3", seen


def test_x_forwarded_for_is_appended(client: httpx.Client) -> None:
    response = client.get("/mock/echo", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    seen = echo(response)["headers"]
    forwarded = seen.get("x-forwarded-for", "")
    assert forwarded.startswith("198.51.100.1, 203.0.113.7, "), forwarded
    entries = [entry.strip() for entry in forwarded.split(",")]
    assert len(entries) == 3, forwarded
    assert_ip(entries[-1])


def test_x_forwarded_for_is_the_peer_when_the_client_sent_none(client: httpx.Client) -> None:
    forwarded = echo(client.get("/mock/echo"))["headers"].get("x-forwarded-for", "")
    assert "," not in forwarded, forwarded
    assert_ip(forwarded)


def test_x_forwarded_proto_and_host_are_set(client: httpx.Client) -> None:
    response = client.get("/mock/echo")
    seen = echo(response)["headers"]
    assert seen.get("x-forwarded-proto") == httpx.URL(BASE_URL).scheme, seen
    assert seen.get("x-forwarded-host") == response.request.headers["host"], seen


def test_client_claims_about_proto_and_host_are_replaced(client: httpx.Client) -> None:
    response = client.get(
        "/mock/echo",
        headers={"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "spoofed.example"},
    )
    seen = echo(response)["headers"]
    assert seen.get("x-forwarded-proto") == httpx.URL(BASE_URL).scheme, seen
    assert seen.get("x-forwarded-host") == response.request.headers["host"], seen


def test_upstream_sees_its_own_host_and_the_client_host_as_forwarded(
    client: httpx.Client,
) -> None:
    client_host = f"e2e-{uuid.uuid4().hex[:8]}.example:4321"
    seen = echo(client.get("/mock/echo", headers={"Host": client_host}))["headers"]
    assert seen.get("host"), seen
    assert seen["host"] != client_host, "the client's Host header reached the upstream"
    assert seen.get("x-forwarded-host") == client_host, seen


def test_valid_request_id_is_kept_and_forwarded(client: httpx.Client) -> None:
    request_id = f"e2e-{uuid.uuid4()}._:@=+/x"
    response = client.get("/mock/echo", headers={"X-Request-ID": request_id})
    assert response.headers.get_list("x-request-id") == [request_id]
    assert echo(response)["headers"].get("x-request-id") == request_id


def test_longest_valid_request_id_is_kept(client: httpx.Client) -> None:
    request_id = ("e2e" + uuid.uuid4().hex * 4)[:128]
    response = client.get("/mock/echo", headers={"X-Request-ID": request_id})
    assert response.headers.get_list("x-request-id") == [request_id]
    assert echo(response)["headers"].get("x-request-id") == request_id


@pytest.mark.parametrize(
    "request_id",
    [
        "has space",
        "x" * 129,
        "semi;colon",
        "<script>alert(1)</script>",
        'quote"d',
        "",
    ],
    ids=["space", "too-long", "semicolon", "markup", "quote", "empty"],
)
def test_invalid_request_id_is_replaced(client: httpx.Client, request_id: str) -> None:
    response = client.get("/mock/echo", headers={"X-Request-ID": request_id})
    returned = response.headers.get_list("x-request-id")
    assert len(returned) == 1, returned
    assert returned[0] != request_id
    assert VALID_REQUEST_ID.fullmatch(returned[0]), returned
    assert echo(response)["headers"].get("x-request-id") == returned[0]


def test_missing_request_id_is_generated_uniquely(client: httpx.Client) -> None:
    ids = []
    for _ in range(3):
        response = client.get("/mock/echo")
        returned = response.headers.get_list("x-request-id")
        assert len(returned) == 1, returned
        assert VALID_REQUEST_ID.fullmatch(returned[0]), returned
        assert echo(response)["headers"].get("x-request-id") == returned[0]
        ids.append(returned[0])
    assert len(set(ids)) == len(ids), ids


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("GET", "/no-such-route", None, 404),
        ("GET", "/unreachable/x", None, 502),
        ("POST", "/strict/echo", b"x" * 4096, 413),
        ("GET", "/scoped/a%2fb", None, 400),
        ("GET", "/mock/status/503", None, 503),
        ("GET", "/mock/status/418", None, 418),
    ],
)
def test_request_id_is_on_error_responses(
    client: httpx.Client, method: str, path: str, content: bytes | None, status: int
) -> None:
    request_id = f"e2e-{uuid.uuid4()}"
    response = client.request(method, path, content=content, headers={"X-Request-ID": request_id})
    body = assert_problem(response, status)
    assert response.headers.get_list("x-request-id") == [request_id]
    assert body["request_id"] == request_id
