"""Liveness, readiness and health, shared by every service.

Liveness says only that the process can answer; it never looks at a downstream, so a
slow upstream can never get a healthy gateway restarted. Readiness says whether this
process should get traffic: it turns false while draining after SIGTERM.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from servicekit.problem import ProblemResponse


class HealthState:
    """Whether this process should receive traffic. Subclasses may add reasons not to."""

    def __init__(self) -> None:
        self.draining = False

    def start_draining(self) -> None:
        """From now on /readyz answers 503, so load balancers stop sending new requests."""
        self.draining = True

    def not_ready_reason(self) -> str | None:
        return "draining: shutting down" if self.draining else None


def health_router(health: HealthState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get(
        "/livez",
        operation_id="livez",
        summary="Liveness probe.",
        description="200 while the process can answer. Never checks a downstream.",
    )
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @router.get(
        "/readyz",
        operation_id="readyz",
        summary="Readiness probe.",
        description=(
            "200 when this process can serve traffic; 503 problem+json while it is "
            "draining or has been made unready."
        ),
        responses={503: {"description": "Not ready", "content": {"application/problem+json": {}}}},
    )
    async def readyz() -> Any:
        reason = health.not_ready_reason()
        if reason is not None:
            return ProblemResponse(503, reason, slug="not-ready", headers={"retry-after": "5"})
        return {"status": "ready"}

    @router.get(
        "/health",
        operation_id="health",
        summary="Health summary.",
        description='Always `{"status": "ok"}` while the process answers.',
    )
    async def health_endpoint() -> dict[str, str]:
        return {"status": "ok"}

    return router
