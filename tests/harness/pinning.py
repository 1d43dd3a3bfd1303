"""Keep-alive connections pinned to one gunicorn worker.

A gunicorn worker keeps every connection it accepted, so every request on such a
connection reaches the same worker: that is how a test talks to each worker on purpose.
Which worker accepts a new connection is the kernel's choice; the worker is found by
matching the connection's ports in the workers' sockets.
"""

from __future__ import annotations

import functools
import http.client
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import psutil
from tests.harness.processes import Service, wait_for


class Reply(NamedTuple):
    """One answer; unpacks as `status, headers, body`."""

    status: int
    headers: dict[str, str]  # lower-case names; repeats joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        return f"{self.status} {self.body[:300]!r}"


class PinnedConnection:
    """One keep-alive connection, served by one worker (`worker_pid`) for its whole life.

    A request that would need a new connection (the server closed this one) fails the
    test instead of silently landing on another worker.
    """

    def __init__(self, conn: http.client.HTTPConnection, worker_pid: int) -> None:
        self.conn = conn
        self.worker_pid = worker_pid
        assert conn.sock is not None
        self._local_port: int = conn.sock.getsockname()[1]

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        sock = self.conn.sock
        assert sock is not None, "the server closed this pinned connection"
        assert sock.getsockname()[1] == self._local_port, "the pinned connection was reopened"
        self.conn.request(method, path, body=body, headers=dict(headers or {}))
        response = self.conn.getresponse()
        data = response.read()
        merged: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        reply = Reply(response.status, merged, data)
        assert self.conn.sock is not None, (
            f"the server closed the pinned connection after {method} {path}: {reply.describe()}"
        )
        return reply

    def close(self) -> None:
        self.conn.close()


@dataclass
class Pinned:
    """One pinned connection per live worker; all closed by `close` or on leaving `with`."""

    connections: list[PinnedConnection]

    def __iter__(self) -> Iterator[PinnedConnection]:
        return iter(self.connections)

    def __len__(self) -> int:
        return len(self.connections)

    def __getitem__(self, index: int) -> PinnedConnection:
        return self.connections[index]

    def __enter__(self) -> Pinned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


def connect(service: Service) -> PinnedConnection:
    """A keep-alive connection to `service`, with the worker that accepted it."""
    return _connect(service, service.wait_workers())


def pin_workers(service: Service, *, attempts: int = 64) -> Pinned:
    """One keep-alive connection per live worker of `service`.

    Connections are opened until every worker has accepted one; the spare ones are
    closed at once.
    """
    workers = service.wait_workers()
    found: dict[int, PinnedConnection] = {}
    try:
        for _ in range(attempts):
            pinned = _connect(service, workers)
            if pinned.worker_pid in found:
                pinned.close()
            else:
                found[pinned.worker_pid] = pinned
            if set(found) == workers:
                return Pinned(list(found.values()))
        raise AssertionError(
            f"{attempts} connections to {service.name} all went to workers {sorted(found)};"
            f" live workers are {sorted(workers)}"
        )
    except BaseException:
        for pinned in found.values():
            pinned.close()
        raise


def _connect(service: Service, workers: set[int]) -> PinnedConnection:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.request("GET", "/livez")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, f"/livez answered {response.status}"
    assert conn.sock is not None
    local_port = conn.sock.getsockname()[1]
    pid = wait_for(
        f"the {service.name} worker serving local port {local_port}",
        functools.partial(_serving_worker, service.port, local_port, workers),
        timeout=5,
    )
    return PinnedConnection(conn, pid)


def _serving_worker(port: int, local_port: int, workers: set[int]) -> int | None:
    for pid in workers:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for c in connections:
            if c.laddr and c.raddr and c.laddr.port == port and c.raddr.port == local_port:
                return pid
    return None
