"""`/flaky/{key}`: fails the first N calls for a key with 503, then succeeds.

This is how a test proves the gateway retries (a GET with `failures=1` succeeds through
it) and does not retry what it must not (a POST still sees the 503). Calls are counted
in the shared store, atomically, so the count is right whichever worker each call hits.
Use a fresh key per test: counts are never reset while the mock runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from downstream_mock.deps import SharedDep
from downstream_mock.errors import MockProblem, problem_responses
from downstream_mock.routing import add_any_method_route

Key = Annotated[str, Path(min_length=1, max_length=200)]
Failures = Annotated[int, Query(ge=0, le=100, description="how many calls fail first")]


class FlakyResult(BaseModel):
    key: str
    calls: int
    failures: int


# Sync on purpose: FastAPI runs it in its thread pool, off the event loop, while the
# shared store waits for SQLite.
def flaky(key: Key, shared: SharedDep, failures: Failures = 1) -> FlakyResult:
    calls = shared.store.count_call(key)
    if calls <= failures:
        raise MockProblem(
            503,
            f"call {calls} of the first {failures} for key {key!r} fails on purpose",
            slug="flaky",
            extra={"key": key, "calls": calls, "failures": failures},
        )
    return FlakyResult(key=key, calls=calls, failures=failures)


def flaky_router() -> APIRouter:
    router = APIRouter(tags=["provoke"])
    add_any_method_route(
        router,
        "/flaky/{key}",
        flaky,
        operation_id="flaky",
        summary="Fail the first N calls for a key, then succeed.",
        description=(
            "Any method. Counts calls per `key` across all workers; calls 1..`failures` "
            "(0-100, default 1) get 503 problem+json, later calls 200 JSON with the count."
        ),
        responses=problem_responses({503: "Failed on purpose"}),
    )
    return router
