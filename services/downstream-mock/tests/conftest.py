from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from downstream_mock.app import create_app
from downstream_mock.settings import Settings

from .support import running


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Small bounds, so out-of-range tests need no large numbers; quiet logs.
    return Settings(
        state_dir=tmp_path / "state",
        access_log=False,
        log_level="warning",
        max_delay_seconds=2,
        max_bytes=1024 * 1024,
        max_chunks=20,
        max_upload_bytes=1024 * 1024,
        max_items=5,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client
