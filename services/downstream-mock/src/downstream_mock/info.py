"""`/info`: which process answered, so a test can tell gunicorn workers apart."""

from __future__ import annotations

import os
import platform
import socket
import time

from fastapi import APIRouter
from pydantic import BaseModel, Field

from downstream_mock.deps import StartedDep
from downstream_mock.settings import Settings


class Info(BaseModel):
    name: str
    version: str
    hostname: str
    pid: int
    uptime_seconds: float = Field(description="since this worker started")
    python: str
    workers: int = Field(description="the configured gunicorn worker count")


def info_router(settings: Settings, *, version: str) -> APIRouter:
    router = APIRouter(tags=["info"])

    @router.get(
        "/info",
        operation_id="info",
        summary="Describe the process that answered.",
        description=(
            "Host name, pid, version, uptime of this worker, Python version and the "
            "configured worker count. Calls landing on different workers show different pids."
        ),
    )
    async def info(started: StartedDep) -> Info:
        return Info(
            name="downstream-mock",
            version=version,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            uptime_seconds=round(time.monotonic() - started, 3),
            python=platform.python_version(),
            workers=settings.workers,
        )

    return router
