"""`/admin`: switches an operator or a test flips at run time, for every worker at once.

The switches live in the shared control file, so whichever worker takes the admin call,
all of them act on it from their next request. The handlers are sync `def`: the file
write takes a lock and FastAPI runs them in its thread pool, off the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from downstream_mock.control import Faults
from downstream_mock.deps import SharedDep
from downstream_mock.settings import Settings


class Readiness(BaseModel):
    ready: bool


def set_ready(shared: SharedDep, ready: bool) -> Readiness:
    control = shared.control.update(lambda c: c.model_copy(update={"ready": ready}))
    return Readiness(ready=control.ready)


def set_faults(shared: SharedDep, faults: Faults) -> Faults:
    return shared.control.update(lambda c: c.model_copy(update={"faults": faults})).faults


def check_latency(faults: Faults, max_delay: float) -> None:
    """The bound comes from settings, so the model alone cannot enforce it."""
    errors = [
        {
            "loc": ("body", name),
            "msg": f"Input should be less than or equal to {max_delay:g}",
            "type": "less_than_equal",
        }
        for name in ("latency_seconds", "latency_jitter_seconds")
        if getattr(faults, name) > max_delay
    ]
    if errors:
        raise RequestValidationError(errors)


def admin_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])
    max_delay = settings.max_delay_seconds

    @router.post(
        "/readyz/enable",
        operation_id="readyz_enable",
        summary="Make /readyz succeed again.",
        description="All calls to /readyz succeed again from now on, on every worker.",
    )
    def readyz_enable(shared: SharedDep) -> Readiness:
        return set_ready(shared, True)

    @router.post(
        "/readyz/disable",
        operation_id="readyz_disable",
        summary="Make /readyz fail.",
        description=(
            "All calls to /readyz fail with 503 from now on, on every worker, until "
            "/admin/readyz/enable. Liveness is not affected."
        ),
    )
    def readyz_disable(shared: SharedDep) -> Readiness:
        return set_ready(shared, False)

    @router.get(
        "/faults",
        operation_id="get_faults",
        summary="Show the injected faults.",
        description="The error rate, error status and latency applied to later requests.",
    )
    def get_faults(shared: SharedDep) -> Faults:
        return shared.control.read().faults

    put_description = (
        "Applies to every later request on every worker except probes, /metrics, docs "
        f"and /admin: error_rate (0-1) of them fail with error_status (500-599), all wait "
        f"latency_seconds plus up to latency_jitter_seconds (each 0-{max_delay:g})."
    )

    @router.put(
        "/faults",
        operation_id="put_faults",
        summary="Set the injected faults.",
        description=put_description,
    )
    def put_faults(faults: Faults, shared: SharedDep) -> Faults:
        check_latency(faults, max_delay)
        return set_faults(shared, faults)

    @router.post(
        "/faults",
        operation_id="post_faults",
        summary="Set the injected faults (same as PUT).",
        description=put_description,
    )
    def post_faults(faults: Faults, shared: SharedDep) -> Faults:
        check_latency(faults, max_delay)
        return set_faults(shared, faults)

    @router.delete(
        "/faults",
        operation_id="delete_faults",
        summary="Remove all injected faults.",
        description="Every worker stops injecting errors and latency from its next request.",
    )
    def delete_faults(shared: SharedDep) -> Faults:
        return set_faults(shared, Faults())

    return router
