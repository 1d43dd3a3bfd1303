from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import assert_problem

NO_FAULTS = {
    "error_rate": 0.0,
    "error_status": 503,
    "latency_seconds": 0.0,
    "latency_jitter_seconds": 0.0,
}


async def test_readiness_toggle(client: httpx.AsyncClient) -> None:
    assert (await client.get("/readyz")).status_code == 200
    disabled = await client.post("/admin/readyz/disable")
    assert disabled.json() == {"ready": False}
    body = assert_problem(await client.get("/readyz"), 503, "not-ready")
    assert "disable" in body["detail"]
    # Liveness and health never follow readiness.
    assert (await client.get("/livez")).status_code == 200
    assert (await client.get("/health")).status_code == 200
    enabled = await client.post("/admin/readyz/enable")
    assert enabled.json() == {"ready": True}
    assert (await client.get("/readyz")).status_code == 200


async def test_readiness_toggle_is_idempotent(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        await client.post("/admin/readyz/disable")
    assert (await client.get("/readyz")).status_code == 503
    for _ in range(2):
        await client.post("/admin/readyz/enable")
    assert (await client.get("/readyz")).status_code == 200


async def test_faults_default_to_none(client: httpx.AsyncClient) -> None:
    assert (await client.get("/admin/faults")).json() == NO_FAULTS


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_set_get_and_clear_faults(client: httpx.AsyncClient, method: str) -> None:
    faults = {
        "error_rate": 0.25,
        "error_status": 502,
        "latency_seconds": 0.5,
        "latency_jitter_seconds": 0.1,
    }
    response = await client.request(method, "/admin/faults", json=faults)
    assert response.status_code == 200
    assert response.json() == faults
    assert (await client.get("/admin/faults")).json() == faults
    cleared = await client.delete("/admin/faults")
    assert cleared.json() == NO_FAULTS
    assert (await client.get("/admin/faults")).json() == NO_FAULTS


async def test_omitted_fields_take_defaults(client: httpx.AsyncClient) -> None:
    response = await client.put("/admin/faults", json={"error_rate": 1})
    assert response.json() == {**NO_FAULTS, "error_rate": 1.0}


async def test_setting_faults_keeps_readiness(client: httpx.AsyncClient) -> None:
    await client.post("/admin/readyz/disable")
    await client.put("/admin/faults", json={"latency_seconds": 0.01})
    assert (await client.get("/readyz")).status_code == 503


@pytest.mark.parametrize(
    "faults",
    [
        {"error_rate": 1.5},
        {"error_rate": -0.1},
        {"error_status": 499},
        {"error_status": 600},
        {"latency_seconds": -1},
        {"latency_seconds": 2.5},
        {"latency_jitter_seconds": 3},
        {"latency_seconds": "slow"},
        {"error_rate": 0.5, "typo": 1},
    ],
)
async def test_invalid_faults_are_422_and_change_nothing(
    client: httpx.AsyncClient, faults: dict[str, Any]
) -> None:
    # The settings fixture allows at most 2 seconds of latency.
    assert_problem(await client.put("/admin/faults", json=faults), 422, "validation")
    assert (await client.get("/admin/faults")).json() == NO_FAULTS
