"""`/status/{code}` and `/delay/{seconds}`: a chosen status, or a chosen slowness.

These are what a gateway test uses to see its retries, circuit breaker and timeouts
act: a 503 or a 504 on demand, or a response that takes longer than the route's timeout.
"""

# No `from __future__ import annotations`: the endpoints' annotations name bounds
# from the settings, local to the router factory, which FastAPI must evaluate eagerly.

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from downstream_mock.errors import MockProblem, problem_responses, status_title
from downstream_mock.routing import add_any_method_route
from downstream_mock.settings import Settings

# A body is not allowed with these, so they are answered empty.
NO_BODY_STATUSES = frozenset({204, 205, 304})

StatusCode = Annotated[
    int,
    Path(ge=200, le=599, description="200-599; 1xx are not final responses, so they are 422"),
]


class Delayed(BaseModel):
    delayed_seconds: float


async def status(code: StatusCode) -> Response:
    if code >= 400:
        raise MockProblem(
            code,
            f"answered {code} because it was asked to",
            slug="requested-status",
            title=status_title(code),
        )
    if code in NO_BODY_STATUSES:
        return Response(status_code=code)
    return JSONResponse({"status": code, "title": status_title(code)}, status_code=code)


def status_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["provoke"])
    add_any_method_route(
        router,
        "/status/{code}",
        status,
        operation_id="status",
        summary="Answer with the given status.",
        description=(
            "Any method. Answers `code` (200-599): problem+json of type "
            "`urn:platform:problem:requested-status` from 400, an empty body for 204, 205 "
            "and 304, JSON otherwise. 1xx and anything else out of range is 422."
        ),
        responses=problem_responses({"4XX": "As requested", "5XX": "As requested"}),
    )

    max_delay = settings.max_delay_seconds

    async def delay(
        seconds: Annotated[float, Path(ge=0, le=max_delay, allow_inf_nan=False)],
    ) -> Delayed:
        await asyncio.sleep(seconds)
        return Delayed(delayed_seconds=seconds)

    add_any_method_route(
        router,
        "/delay/{seconds}",
        delay,
        operation_id="delay",
        summary="Answer after a delay.",
        description=(
            f"Any method. Waits `seconds` (0-{max_delay:g}, fractions allowed) before "
            "answering 200 with JSON; out of range is 422. For timeout tests."
        ),
    )
    return router
