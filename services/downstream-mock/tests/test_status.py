from __future__ import annotations

import time

import httpx
import pytest

from .support import assert_problem


@pytest.mark.parametrize("code", [200, 201, 202, 299, 301, 302])
async def test_success_and_redirect_codes_answer_json(client: httpx.AsyncClient, code: int) -> None:
    response = await client.get(f"/status/{code}")
    assert response.status_code == code
    assert response.json()["status"] == code


@pytest.mark.parametrize("code", [204, 205, 304])
async def test_bodiless_codes_answer_empty(client: httpx.AsyncClient, code: int) -> None:
    response = await client.get(f"/status/{code}")
    assert response.status_code == code
    assert response.content == b""


@pytest.mark.parametrize("code", [400, 404, 418, 429, 500, 502, 503, 504, 599])
async def test_error_codes_answer_problem(client: httpx.AsyncClient, code: int) -> None:
    body = assert_problem(await client.get(f"/status/{code}"), code, "requested-status")
    assert body["title"]


async def test_any_method(client: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        assert (await client.request(method, "/status/502")).status_code == 502


@pytest.mark.parametrize("code", ["100", "101", "199", "99", "600", "0", "-1", "abc", "2.5"])
async def test_out_of_range_or_malformed_is_422(client: httpx.AsyncClient, code: str) -> None:
    assert_problem(await client.get(f"/status/{code}"), 422, "validation")


async def test_delay_waits(client: httpx.AsyncClient) -> None:
    start = time.monotonic()
    response = await client.get("/delay/0.2")
    elapsed = time.monotonic() - start
    assert response.status_code == 200
    assert response.json() == {"delayed_seconds": 0.2}
    assert elapsed >= 0.2


async def test_delay_zero_and_post(client: httpx.AsyncClient) -> None:
    response = await client.post("/delay/0")
    assert response.status_code == 200
    assert response.json() == {"delayed_seconds": 0}


@pytest.mark.parametrize("seconds", ["-0.1", "2.01", "1e9", "nan", "inf", "soon"])
async def test_delay_out_of_bounds_is_422(client: httpx.AsyncClient, seconds: str) -> None:
    # The settings fixture allows at most 2 seconds.
    assert_problem(await client.get(f"/delay/{seconds}"), 422, "validation")
