"""Fault injection: added latency and failed requests, as set through /admin/faults.

A pure ASGI middleware, so it can hold or fail a request before any route runs and
without buffering anything. Probes, metrics, the API docs and /admin are never faulted:
a fault test must not get the mock restarted or taken out of rotation, and the operator
must always be able to turn the faults off again.
"""

from __future__ import annotations

import asyncio
import random

from starlette.types import ASGIApp, Receive, Scope, Send

from downstream_mock.deps import SHARED_KEY
from downstream_mock.errors import status_title
from downstream_mock.state import SharedState
from servicekit.middleware import PROBE_PATHS
from servicekit.problem import PROBLEM_CONTENT_TYPE, problem_body

EXEMPT_PATHS = PROBE_PATHS | {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
ADMIN_PREFIX = "/admin"
# On every injected failure, so a test can tell it from an error the route made.
FAULT_HEADER = (b"x-mock-fault", b"error")


def is_exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


class FaultMiddleware:
    def __init__(self, app: ASGIApp, *, rng: random.Random | None = None) -> None:
        self.app = app
        # Not for security: which requests fail only has to look random. Injectable
        # so that tests can make it predictable.
        self.rng = rng or random.Random()  # noqa: S311

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        shared = scope.get("state", {}).get(SHARED_KEY)
        if not isinstance(shared, SharedState):
            # No lifespan ran: nothing is configured, so nothing to inject.
            await self.app(scope, receive, send)
            return
        faults = shared.control.read().faults
        delay = faults.latency_seconds
        if faults.latency_jitter_seconds > 0:
            delay += self.rng.uniform(0, faults.latency_jitter_seconds)
        if delay > 0:
            await asyncio.sleep(delay)
        if faults.error_rate > 0 and self.rng.random() < faults.error_rate:
            await self._fail(send, faults.error_status)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _fail(send: Send, status: int) -> None:
        # Not servicekit's send_problem: that derives the title from the status, and
        # 5xx codes without a registered phrase (520, 599) are allowed here.
        body = problem_body(
            status,
            "failed on purpose by the fault injection set through /admin/faults",
            slug="injected-fault",
            title=status_title(status),
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    FAULT_HEADER,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
