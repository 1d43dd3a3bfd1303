"""FastAPI dependencies for what the lifespan put in its state.

The lifespan state is copied into every request's scope by the server, so routes (and
the fault middleware, which reads the scope directly) reach the shared state without a
module-level global.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from downstream_mock.state import SharedState

SHARED_KEY = "shared"
STARTED_KEY = "started"


def get_shared(request: Request) -> SharedState:
    return cast(SharedState, getattr(request.state, SHARED_KEY))


def get_started(request: Request) -> float:
    """`time.monotonic()` when this worker's lifespan started."""
    return cast(float, getattr(request.state, STARTED_KEY))


SharedDep = Annotated[SharedState, Depends(get_shared)]
StartedDep = Annotated[float, Depends(get_started)]
