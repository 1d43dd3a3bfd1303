"""What an app asks of the server that runs it: how to drain, how to guard request heads.

The app factory knows its settings and its `HealthState`; the gunicorn worker knows the
signals and the sockets. They meet here: `new_service_app` attaches a `ServerPolicy` to
`app.state`, and `servicekit.workers` reads it from the loaded app before serving. No
module-level registry: every app carries its own, so tests can build many apps in one
process, and an app run by a plain `uvicorn` (development) simply has nothing read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servicekit.health import HealthState
from servicekit.settings import ServiceSettings

_STATE_KEY = "servicekit_server_policy"


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Hard ceilings the HTTP protocol enforces while a request head is still arriving.

    `max_bytes` counts the request line and header lines as sent; `timeout` runs from the
    first byte of a request to the end of its head.
    """

    max_count: int
    max_bytes: int
    timeout: float


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    health: HealthState
    drain_delay: float
    head_limits: HeadLimits


def server_policy(settings: ServiceSettings, health: HealthState) -> ServerPolicy:
    """The policy for an app built from `settings`.

    The protocol's ceilings are twice the settings: a head a little over the limit still
    reaches the app, which refuses it with a logged, counted problem+json (the gateway's
    dispatcher does so), while a head of megabytes is cut off before it is buffered.
    """
    return ServerPolicy(
        health=health,
        drain_delay=settings.drain_delay,
        head_limits=HeadLimits(
            max_count=2 * settings.max_header_count,
            max_bytes=2 * int(settings.max_header_bytes),
            timeout=settings.client_header_timeout,
        ),
    )


def attach_policy(app: Any, policy: ServerPolicy) -> None:
    """Store `policy` on a Starlette/FastAPI `app`."""
    setattr(app.state, _STATE_KEY, policy)


def policy_of(app: Any) -> ServerPolicy | None:
    """The policy attached to `app`, or None for an app that has none."""
    policy = getattr(getattr(app, "state", None), _STATE_KEY, None)
    return policy if isinstance(policy, ServerPolicy) else None
