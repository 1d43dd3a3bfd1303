from __future__ import annotations

import asyncio
import os
import platform
import socket

import httpx

from downstream_mock.app import package_version


async def test_info_describes_this_process(client: httpx.AsyncClient) -> None:
    body = (await client.get("/info")).json()
    assert body["name"] == "downstream-mock"
    assert body["version"] == package_version() != "0.0.0+unknown"
    assert body["hostname"] == socket.gethostname()
    assert body["pid"] == os.getpid()
    assert body["python"] == platform.python_version()
    assert body["workers"] == 2
    assert 0 <= body["uptime_seconds"] < 60


async def test_uptime_grows(client: httpx.AsyncClient) -> None:
    first = (await client.get("/info")).json()["uptime_seconds"]
    await asyncio.sleep(0.05)
    second = (await client.get("/info")).json()["uptime_seconds"]
    assert second >= first + 0.04
