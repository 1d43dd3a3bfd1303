"""Readiness for the mock: servicekit's draining, plus the operator's switch.

`POST /admin/readyz/disable` makes every worker's /readyz fail from then on (podinfo
semantics), so a test can watch a load balancer or Kubernetes take the mock out of
rotation; `POST /admin/readyz/enable` brings it back. Liveness is never affected.
"""

from __future__ import annotations

from downstream_mock.control import ControlFile
from servicekit.health import HealthState

DISABLED_REASON = "made unready by POST /admin/readyz/disable"


class MockHealth(HealthState):
    def __init__(self) -> None:
        super().__init__()
        # Attached by the lifespan once the shared state is open.
        self.control: ControlFile | None = None

    def not_ready_reason(self) -> str | None:
        reason = super().not_ready_reason()
        if reason is not None:
            return reason
        if self.control is not None and not self.control.read().ready:
            return DISABLED_REASON
        return None
