"""gunicorn worker classes: uvicorn workers that drain on SIGTERM and guard request heads.

The worker reads the app's `ServerPolicy` (see `servicekit.policy`: health to flip,
drain delay, head limits) from the loaded app, and serves it with a `DrainingServer`
(see `servicekit.drain`) and the `GuardedHttpToolsProtocol` (see `servicekit.protocol`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from servicekit.drain import DrainingServer
from servicekit.policy import policy_of
from servicekit.protocol import GuardedHttpToolsProtocol

logger = logging.getLogger("servicekit.workers")


class ServiceWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn on uvloop and httptools, without a `Server` header advertising either."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "server_header": False,
        # httptools, with limits and a deadline on request heads (it has neither).
        "http": GuardedHttpToolsProtocol,
        # Only for h11, which a subclass could pick instead: its default is 16 KiB; the
        # same ceiling as GuardedHttpToolsProtocol's default, twice the 32 KiB setting.
        "h11_max_incomplete_event_size": 64 * 1024,
    }

    async def _serve(self) -> None:
        # UvicornWorker._serve (uvicorn-worker 0.4), with our server and a SIGQUIT that
        # reaches it: uvicorn-worker's handler only sets gunicorn's `alive` flag, which
        # uvicorn never reads, so gunicorn's quick shutdown waited for SIGKILL.
        self.config.app = self.wsgi
        policy = policy_of(self.wsgi)
        if policy is None:
            logger.warning("the app has no server policy: SIGTERM stops it without a drain")
        server = DrainingServer(self.config, policy, graceful_timeout=self.cfg.graceful_timeout)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGQUIT, server.handle_exit, signal.SIGQUIT, None)
        freeze_startup_heap()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def freeze_startup_heap() -> None:
    """Keep what start-up built out of every later garbage collection.

    By now the worker has imported its modules and built its app: a large heap that
    lives as long as the worker. Every full collection under load would walk all of it
    again; profiled, the collector took a fifth of the downstream-mock's CPU. After one
    last collection of start-up's garbage, `gc.freeze` moves the survivors to the
    permanent generation, which collections skip (what the `gc` docs advise for servers
    that fork; here the app is built after the fork, so it is frozen in the worker).
    """
    gc.collect()
    gc.freeze()


class ProxyWorker(ServiceWorker):
    """For the gateway: the upstream's `Date` passes through, so uvicorn must not add one."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**ServiceWorker.CONFIG_KWARGS, "date_header": False}
