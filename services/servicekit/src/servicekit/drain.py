"""Graceful drain: what a worker does between SIGTERM and its exit.

    SIGTERM ──► /readyz answers 503 at once; everything else is served as before,
     │          new connections included; responses carry `Connection: close`
     │   drain_delay seconds: load balancers and kube-proxy stop sending here
     ▼
    stop accepting; idle keep-alive connections close; in-flight requests finish,
     │   for what is left of gunicorn's graceful_timeout minus a second
     ▼
    requests still running are cancelled; lifespan shutdown (upstream pool, traces);
    the worker exits 0 — before gunicorn's SIGKILL at graceful_timeout.

`DrainingServer` is uvicorn's `Server` with that SIGTERM handling. A second SIGTERM cuts
the delay short; SIGINT and SIGQUIT (gunicorn's quick shutdown) skip it.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

from uvicorn.config import Config
from uvicorn.server import Server

from servicekit.policy import ServerPolicy
from servicekit.protocol import GuardedServerState

logger = logging.getLogger("servicekit.drain")

# Kept back from gunicorn's graceful_timeout for the lifespan shutdown after requests
# are cancelled: closing the upstream pool, flushing traces.
SHUTDOWN_RESERVE = 1.0


class DrainingServer(Server):
    def __init__(
        self,
        config: Config,
        policy: ServerPolicy | None,
        *,
        graceful_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config)
        self.guarded_state = GuardedServerState(policy.head_limits if policy else None)
        self.server_state = self.guarded_state
        self.policy = policy
        self.graceful_timeout = graceful_timeout
        self._clock = clock
        self.drain_started: float | None = None
        self._drain_announced = False
        # Without a drain (SIGINT, SIGQUIT), in-flight requests get all of the grace.
        config.timeout_graceful_shutdown = self._in_flight_budget(0.0)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags. Logging here could deadlock on a lock the
        # interrupted code holds; on_tick logs instead.
        if sig == signal.SIGTERM and self.policy is not None and self.started:
            if self.drain_started is None:
                self.drain_started = self._clock()
                self.policy.health.start_draining()
                self.guarded_state.draining = True
                return
            self._stop_accepting()  # a second SIGTERM: no more waiting
            return
        # uvicorn's own handling, except that it also remembers the signal to re-raise it
        # once the server has stopped; in a gunicorn worker (signals reset to SIG_DFL)
        # that kills the worker by signal before gunicorn's worker_exit hook, which
        # flushes traces, can run. Returning normally lets the worker exit 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self._stop_accepting()

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            elapsed = self._clock() - self.drain_started
            delay = self.policy.drain_delay if self.policy else 0.0
            if not self._drain_announced:
                self._drain_announced = True
                logger.info(
                    "draining: /readyz answers 503; still serving for %.3g s so that load "
                    "balancers stop sending",
                    delay,
                )
            if elapsed >= delay:
                self._stop_accepting()
                logger.info(
                    "drain delay over: no new connections; in-flight requests get up to %s s",
                    self.config.timeout_graceful_shutdown,
                )
        return await super().on_tick(counter)

    def _stop_accepting(self) -> None:
        """Leave the main loop: uvicorn then closes the listeners and drains connections."""
        elapsed = 0.0 if self.drain_started is None else self._clock() - self.drain_started
        self.config.timeout_graceful_shutdown = self._in_flight_budget(elapsed)
        self.should_exit = True

    def _in_flight_budget(self, elapsed: float) -> int:
        # uvicorn types this as whole seconds; round down, so we never outlast gunicorn.
        return max(1, int(self.graceful_timeout - elapsed - SHUTDOWN_RESERVE))
