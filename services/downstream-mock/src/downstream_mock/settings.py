"""The mock's settings: `MOCK_*` environment variables, read once by the app factory.

The bounds exist so that a test (or a typo in one) cannot make the mock sleep for an
hour, stream a terabyte or fill the disk: anything beyond them is answered with 422.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from servicekit.settings import ServiceSettings

MIB = 1024 * 1024


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCK_", frozen=True, extra="ignore")

    # 8081 so that `make run` can put the gateway on 8080 next to it; containers set 8080.
    port: int = Field(default=8081, ge=1, le=65535)

    max_delay_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="longest /delay and injected latency"
    )
    max_bytes: int = Field(default=256 * MIB, ge=0, description="largest /bytes/{n}")
    max_chunks: int = Field(default=1000, ge=1, description="most chunks for /stream/{chunks}")
    max_upload_bytes: int = Field(
        default=256 * MIB, ge=0, description="largest POST /upload body; larger gets 413"
    )
    max_items: int = Field(default=10_000, ge=0, description="most items /items will hold")
    state_dir: Path | None = Field(
        default=None,
        description=(
            "directory holding the state shared by all workers (items, flaky counters, "
            "faults, readiness); a private temporary directory when unset"
        ),
    )
