"""Two apps on one state directory behave like two gunicorn workers of one mock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest

from downstream_mock.app import create_app
from downstream_mock.settings import Settings

from .support import running


@pytest.fixture
async def workers(settings: Settings) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running(create_app(settings))) for _ in range(2)]


async def test_items_are_shared(workers: list[httpx.AsyncClient]) -> None:
    a, b = workers
    created = (await a.post("/items", json={"name": "shared", "price": 1})).json()
    for i in range(20):
        response = await workers[i % 2].get(f"/items/{created['id']}")
        assert response.status_code == 200
        assert response.json() == created
    assert (await b.delete(f"/items/{created['id']}")).status_code == 204
    assert (await a.get(f"/items/{created['id']}")).status_code == 404


async def test_flaky_counts_across_workers(workers: list[httpx.AsyncClient]) -> None:
    statuses = [(await workers[i % 2].get("/flaky/w?failures=3")).status_code for i in range(6)]
    assert statuses == [503, 503, 503, 200, 200, 200]
    assert (await workers[1].get("/flaky/w?failures=3")).json()["calls"] == 7


async def test_faults_set_on_one_apply_on_both(workers: list[httpx.AsyncClient]) -> None:
    a, b = workers
    await a.put("/admin/faults", json={"error_rate": 1, "error_status": 500})
    assert (await b.get("/admin/faults")).json()["error_rate"] == 1
    assert (await a.get("/echo")).status_code == 500
    assert (await b.get("/echo")).status_code == 500
    await b.delete("/admin/faults")
    assert (await a.get("/echo")).status_code == 200


async def test_readiness_switch_applies_to_both(workers: list[httpx.AsyncClient]) -> None:
    a, b = workers
    await b.post("/admin/readyz/disable")
    assert (await a.get("/readyz")).status_code == 503
    assert (await b.get("/readyz")).status_code == 503
    await a.post("/admin/readyz/enable")
    assert (await b.get("/readyz")).status_code == 200
