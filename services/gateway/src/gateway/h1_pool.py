"""Keep-alive connections to upstreams, per origin, under one limit for the worker.

Idle connections are reused last-in first-out: the most recently used one is the least
likely to have been closed by the upstream, and the ones at the bottom age out. They
expire after `keepalive_seconds` (shorter than the upstream's own keep-alive, so the
gateway closes first and never writes to a connection being closed), checked when one
is taken and by a timer that runs only while something is idle. One the upstream closes
leaves the pool by itself (`H1Connection.on_gone`).

`max_connections` bounds open connections across all origins. At the limit an idle
connection to another origin is closed to make room; otherwise the request waits for a
connection to come back or close, no longer than its connect timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from gateway.errors import UpstreamTimeout, UpstreamUnreachable, reason
from gateway.h1_connection import H1Connection
from gateway.h1_request import Origin


class H1Pool:
    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_seconds: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max = max_connections
        self._keepalive = keepalive_seconds
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[H1Connection]] = {}
        self._open: set[H1Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_count(self) -> int:
        """Connections open or being opened."""
        return len(self._open) + self._opening

    @property
    def connections(self) -> frozenset[H1Connection]:
        """The open connections, idle or in use (for introspection)."""
        return frozenset(self._open)

    @property
    def idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def checkout(self, origin: Origin) -> H1Connection | None:
        """An idle connection to `origin` that has not expired, or None."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        conn = idle.pop()
        if conn.loop.time() - conn.idle_since < self._keepalive:
            conn.pooled = False
            return conn
        # The freshest has expired, so has everything below it.
        idle.append(conn)
        self._close_all(idle)
        return None

    async def connect(self, origin: Origin, deadline: float) -> H1Connection:
        """A connection to `origin`, a new one unless one came back while waiting."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise UpstreamUnreachable("the upstream client is closed")
            conn = self.checkout(origin)
            if conn is not None:
                return conn
            if self.open_count < self._max or self._evict():
                break
            await self._wait(deadline)
        conn = H1Connection(loop, origin)
        self._opening += 1
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=self._ssl() if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("could not connect to the upstream in time") from None
        except (OSError, ValueError) as exc:
            raise UpstreamUnreachable(f"cannot connect to the upstream: {reason(exc)}") from None
        finally:
            self._opening -= 1
            if not conn.closed and conn.transport is not None:
                conn.on_gone = self._gone
                self._open.add(conn)
            elif self._waiters:
                self._notify()  # the slot this attempt held is free again
        if self._closed or conn.closed:
            conn.close()
            raise UpstreamUnreachable("the upstream connection closed as it opened")
        return conn

    def release(self, conn: H1Connection) -> None:
        """Back to the pool: the exchange ended cleanly (see `H1Connection.reusable`)."""
        if self._closed or conn.closed:
            conn.close()
            return
        now = conn.loop.time()
        conn.idle_since = now
        conn.pooled = True
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = []
        idle.append(conn)
        if self._waiters:
            self._notify()
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(now + self._keepalive, self._sweep)

    async def aclose(self) -> None:
        """Close every connection, idle or in use; waiting requests fail."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        conns = list(self._open)
        for conn in conns:
            conn.close()
        while self._waiters:
            self._notify()
        lost = [conn.lost for conn in conns if not conn.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=1.0)

    # --- internals ----------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _gone(self, conn: H1Connection) -> None:
        self._open.discard(conn)
        if conn.pooled:
            conn.pooled = False
            idle = self._idle.get(conn.origin)
            if idle is not None and conn in idle:
                idle.remove(conn)
        if self._waiters:
            self._notify()

    def _notify(self) -> None:
        """Wake one waiter, which looks again for a connection or a free slot."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _wait(self, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            raise UpstreamTimeout("no upstream connection became free in time") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._notify()  # woken but leaving: pass the turn on
            raise

    def _evict(self) -> bool:
        """Close the oldest idle connection (to some other origin) to free a slot."""
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)
                conn.pooled = False
                conn.close()
                return True
        return False

    def _close_all(self, idle: list[H1Connection]) -> None:
        expired = idle[:]
        idle.clear()
        for conn in expired:
            conn.pooled = False
            conn.close()

    def _sweep(self) -> None:
        """Close what has been idle too long; runs while anything is idle."""
        self._sweeper = None
        soonest: float | None = None
        for idle in self._idle.values():
            if not idle:
                continue
            now = idle[0].loop.time()
            expired = [c for c in idle if now - c.idle_since >= self._keepalive]
            for conn in expired:
                idle.remove(conn)
                conn.pooled = False
                conn.close()
            for conn in idle:
                due = conn.idle_since + self._keepalive
                soonest = due if soonest is None else min(soonest, due)
        if soonest is not None and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_at(soonest, self._sweep)
