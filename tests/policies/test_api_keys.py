"""API keys on /keyed, and X-Auth-* headers that a client sends but must never deliver.

The upstream trusts X-Auth-Subject and X-Auth-Scopes because only the gateway sets them:
whatever a client sends under any X-Auth-* name (or X_Auth_*, which many servers read
as the same) is dropped on every route, with auth or without. The mock's /echo shows
the headers exactly as they arrived, repeats joined with ", ".
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.harness.scrape import scrape

from .support import Stack

SPOOFED = {
    "X-Auth-Subject": "admin",
    "x-auth-scopes": "everything",
    "X-Auth-Anything": "at-all",
    "X_Auth_Subject": "admin-underscore",
    "X-Not-Auth": "kept",
}


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway.url, timeout=10) as client:
        yield client


def auth_headers_seen(echo: httpx.Response) -> dict[str, str]:
    assert echo.status_code == 200, echo.text
    seen: dict[str, str] = echo.json()["headers"]
    # A control: an ordinary custom header does arrive, so an empty result means something.
    assert seen.get("x-not-auth") == "kept", seen
    return {k: v for k, v in seen.items() if k.replace("_", "-").startswith("x-auth-")}


def test_the_right_key_is_let_through_as_its_subject(stack: Stack, client: httpx.Client) -> None:
    response = client.get("/keyed/echo", headers={"X-API-Key": stack.api_key, "X-Not-Auth": "kept"})

    assert auth_headers_seen(response) == {"x-auth-subject": "ci-bot", "x-auth-scopes": ""}
    assert "x-api-key" not in response.json()["headers"], "the key itself went upstream"


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, None),
        ({"X-API-Key": "not-the-key"}, 'error="invalid_key"'),
        # The right key in the wrong header is no key at all.
        ({"Authorization": "Bearer {key}"}, None),
    ],
    ids=["missing", "wrong", "wrong-header"],
)
def test_a_missing_or_wrong_key_is_401(
    stack: Stack, client: httpx.Client, headers: dict[str, str], error: str | None
) -> None:
    before = scrape(stack.mock).total("http_server_requests_total")
    headers = {k: v.format(key=stack.api_key) for k, v in headers.items()}

    response = client.get("/keyed/echo", headers=headers)

    assert response.status_code == 401, response.text
    assert response.json()["type"] == "urn:platform:problem:unauthorized"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('ApiKey realm="gateway", header="X-API-Key"'), challenge
    if error is None:
        assert "error=" not in challenge, challenge
    else:
        assert error in challenge, challenge
    assert scrape(stack.mock).total("http_server_requests_total") == before


def test_spoofed_auth_headers_never_reach_the_mock_on_an_open_route(client: httpx.Client) -> None:
    response = client.get("/open/echo", headers=SPOOFED)
    assert auth_headers_seen(response) == {}


def test_spoofed_auth_headers_cannot_name_another_subject(
    stack: Stack, client: httpx.Client
) -> None:
    response = client.get("/keyed/echo", headers={**SPOOFED, "X-API-Key": stack.api_key})
    # Exactly the gateway's own values: a client's copy would show up joined to them.
    assert auth_headers_seen(response) == {"x-auth-subject": "ci-bot", "x-auth-scopes": ""}


def test_spoofed_auth_headers_cannot_hide_behind_connection(
    stack: Stack, client: httpx.Client
) -> None:
    # Naming X-Auth-Subject in Connection must not make the hop-by-hop filter drop the
    # gateway's own header, nor let the client's through.
    headers = {**SPOOFED, "X-API-Key": stack.api_key, "Connection": "keep-alive, X-Auth-Subject"}
    response = client.get("/keyed/echo", headers=headers)
    assert auth_headers_seen(response) == {"x-auth-subject": "ci-bot", "x-auth-scopes": ""}
