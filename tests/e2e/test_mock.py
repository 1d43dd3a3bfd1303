"""The downstream-mock's own features, used through the gateway as a client would.

Guards the items CRUD round trip (201 + Location, read back on whichever worker, replace,
delete, 404 after), validation as 422 problem+json, `/flaky` failing exactly N times
per key, and `/info` - all arriving through `/mock` unchanged.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from .support import assert_problem, media_type


def new_item() -> dict[str, Any]:
    return {
        "name": f"e2e-{uuid.uuid4().hex[:12]}",
        "description": "made by tests/e2e",
        "price": 12.5,
        "quantity": 3,
        "tags": ["e2e", "round-trip"],
    }


def test_items_crud_round_trip(client: httpx.Client) -> None:
    item = new_item()
    created = client.post("/mock/items", json=item)
    assert created.status_code == 201, created.text
    body = created.json()
    item_id = body["id"]
    assert isinstance(item_id, int)
    assert {k: body[k] for k in item} == item

    # The Location header is relative, so it resolves under /mock through the gateway.
    location = created.url.join(created.headers["location"])
    assert location.path == f"/mock/items/{item_id}", location
    fetched = client.get(location)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == body

    replacement = {**new_item(), "price": 99.0, "tags": []}
    replaced = client.put(f"/mock/items/{item_id}", json=replacement)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json() == {**replacement, "id": item_id}
    assert client.get(f"/mock/items/{item_id}").json() == {**replacement, "id": item_id}

    page = client.get("/mock/items", params={"limit": 1})
    assert page.status_code == 200, page.text
    assert page.json()["total"] >= 1

    deleted = client.delete(f"/mock/items/{item_id}")
    assert deleted.status_code == 204, deleted.text
    assert deleted.content == b""
    assert_problem(client.get(f"/mock/items/{item_id}"), 404, "item-not-found")
    assert_problem(client.delete(f"/mock/items/{item_id}"), 404, "item-not-found")


@pytest.mark.parametrize(
    "payload",
    [
        {"price": 1.0},
        {"name": "", "price": 1.0},
        {"name": "x", "price": -1},
        {"name": "x", "price": "cheap"},
        {"name": "x", "price": 1.0, "unexpected": True},
        {"name": "x", "price": 1.0, "tags": [""]},
    ],
    ids=["no-name", "empty-name", "negative-price", "price-not-number", "extra-field", "empty-tag"],
)
def test_invalid_item_is_422_problem(client: httpx.Client, payload: dict[str, Any]) -> None:
    body = assert_problem(client.post("/mock/items", json=payload), 422)
    assert body.get("errors"), body


def test_malformed_json_is_422_problem(client: httpx.Client) -> None:
    response = client.post(
        "/mock/items", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 422)


def test_unknown_item_is_404_problem(client: httpx.Client) -> None:
    assert_problem(client.get(f"/mock/items/{2**62}"), 404, "item-not-found")


def test_flaky_fails_exactly_n_times(client: httpx.Client) -> None:
    key = f"e2e-{uuid.uuid4()}"
    statuses = []
    for _ in range(3):
        response = client.get(f"/mock/flaky/{key}", params={"failures": 2})
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert_problem(response, 503, "flaky")
    assert statuses == [503, 503, 200]
    assert response.json() == {"key": key, "calls": 3, "failures": 2}


def test_info_describes_the_mock(client: httpx.Client) -> None:
    response = client.get("/mock/info")
    assert response.status_code == 200, response.text
    assert media_type(response) == "application/json"
    info = response.json()
    assert info["name"] == "downstream-mock"
    assert {"version", "hostname", "pid", "uptime_seconds"} <= info.keys(), info
    assert isinstance(info["pid"], int)
    assert info["pid"] > 0
    assert info["uptime_seconds"] >= 0
