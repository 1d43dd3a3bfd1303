from __future__ import annotations

import httpx
import pytest

from .support import assert_problem


async def test_first_n_calls_fail_then_succeed(client: httpx.AsyncClient) -> None:
    for call in (1, 2, 3):
        body = assert_problem(await client.get("/flaky/k1?failures=3"), 503, "flaky")
        assert body["calls"] == call
        assert body["failures"] == 3
    for call in (4, 5):
        response = await client.get("/flaky/k1?failures=3")
        assert response.status_code == 200
        assert response.json() == {"key": "k1", "calls": call, "failures": 3}


async def test_plain_503_without_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.get("/flaky/k2")
    assert response.status_code == 503
    assert "retry-after" not in response.headers


async def test_default_is_one_failure(client: httpx.AsyncClient) -> None:
    assert (await client.get("/flaky/k3")).status_code == 503
    assert (await client.get("/flaky/k3")).status_code == 200


async def test_zero_failures_always_succeeds(client: httpx.AsyncClient) -> None:
    assert (await client.get("/flaky/k4?failures=0")).json()["calls"] == 1


async def test_keys_are_counted_separately_and_across_methods(client: httpx.AsyncClient) -> None:
    assert (await client.post("/flaky/a?failures=1")).status_code == 503
    assert (await client.put("/flaky/b?failures=1")).status_code == 503
    assert (await client.delete("/flaky/a?failures=1")).status_code == 200


@pytest.mark.parametrize("query", ["failures=-1", "failures=101", "failures=x"])
async def test_bad_failures_is_422(client: httpx.AsyncClient, query: str) -> None:
    assert_problem(await client.get(f"/flaky/k5?{query}"), 422, "validation")
    # A rejected call is not counted.
    assert (await client.get("/flaky/k5?failures=0")).json()["calls"] == 1


async def test_too_long_key_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/flaky/{'k' * 201}"), 422, "validation")
