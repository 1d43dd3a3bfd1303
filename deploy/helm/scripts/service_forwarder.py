"""A Kubernetes Service's ClusterIP, for `make e2e-chart`: a small TCP forwarder.

    python3 service_forwarder.py /config/endpoints.json

run_rendered.py runs one of these per rendered Service, in a container whose network
aliases are the Service's DNS names, and keeps the JSON file up to date the way the
endpoints controller keeps a Service's EndpointSlices:

    {"service": "platform-gateway",
     "ports": [{"name": "http", "port": 80, "targets": [["172.18.0.3", 8080], ...]},
               {"name": "closed", "port": 9, "targets": []}]}

A port is listened on while it has targets, and each connection goes to the next target
in turn (kube-proxy picks one at random). A port without targets is not listened on, so
a client's SYN is answered with a RST: what kube-proxy's REJECT rule does for a Service
without ready endpoints, and what the pod's own kernel does behind kube-proxy's DNAT
when nothing listens on the target port (run_rendered.py lists only targets that accept
a connection). Both directions are copied as they come, half-closes included, so a
client that goes away is seen going away by the pod.

Standard library only: it runs in the services' base image.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.2
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 5.0


def say(message: str) -> None:
    print(f"[service-forwarder] {message}", flush=True)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


def abort(writer: asyncio.StreamWriter) -> None:
    """Close with a RST, as a peer whose connection broke would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Port:
    """One Service port: its listener and the targets it sends connections to."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.targets: list[tuple[str, int]] = []
        self.server: asyncio.Server | None = None
        self._turn = itertools.count()

    def next_target(self) -> tuple[str, int] | None:
        if not self.targets:
            return None
        return self.targets[next(self._turn) % len(self.targets)]

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        target = self.next_target()
        if target is None:
            abort(client_w)
            return
        try:
            upstream_r, upstream_w = await asyncio.wait_for(
                asyncio.open_connection(*target), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            say(f":{self.port} -> {target[0]}:{target[1]}: {exc!r}; resetting the client")
            abort(client_w)
            return
        tasks = [
            asyncio.create_task(pipe(client_r, upstream_w)),
            asyncio.create_task(pipe(upstream_r, client_w)),
        ]
        try:
            await asyncio.gather(*tasks)
        except (OSError, asyncio.IncompleteReadError):
            # One side broke (reset, or gone): the other side sees it break too.
            for task in tasks:
                task.cancel()
            abort(client_w)
            abort(upstream_w)
        else:
            client_w.close()
            upstream_w.close()

    async def update(self, targets: list[tuple[str, int]], first: bool = False) -> None:
        changed = targets != self.targets
        self.targets = targets
        if targets and self.server is None:
            self.server = await asyncio.start_server(
                self.handle, "0.0.0.0", self.port, reuse_address=True, backlog=512
            )
            say(f"listening on :{self.port} -> {fmt(targets)}")
        elif not targets and (self.server is not None or first):
            # New connections are refused from now on; open ones carry on.
            if self.server is not None:
                self.server.close()
                self.server = None
            say(f"not listening on :{self.port} (no target): connections are refused")
        elif changed:
            say(f":{self.port} -> {fmt(targets)}")


def fmt(targets: list[tuple[str, int]]) -> str:
    return ", ".join(f"{host}:{port}" for host, port in targets) or "nothing"


def read_config(text: str, path: Path) -> dict[int, list[tuple[str, int]]] | None:
    try:
        config: dict[str, Any] = json.loads(text)
    except ValueError as exc:  # written in place by someone: the next poll reads it whole
        say(f"cannot read {path}: {exc}")
        return None
    return {
        int(entry["port"]): [(str(host), int(port)) for host, port in entry.get("targets", [])]
        for entry in config.get("ports", [])
    }


async def serve(path: Path, stop: asyncio.Event) -> None:
    """Follow the endpoints file until `stop` is set."""
    ports: dict[int, Port] = {}
    say(f"watching {path}")
    seen: str | None = None
    while not stop.is_set():
        with contextlib.suppress(OSError):
            text = await asyncio.to_thread(path.read_text)
            config = read_config(text, path) if text != seen else None
            if config is not None:
                seen = text
                for number in sorted(set(config) | set(ports)):
                    first = number not in ports
                    port = ports.setdefault(number, Port(number))
                    await port.update(config.get(number, []), first=first)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_SECONDS)
    say("stopping")
    for port in ports.values():
        await port.update([])


async def main(path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(path, stop)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: service_forwarder.py ENDPOINTS_JSON")
    asyncio.run(main(Path(sys.argv[1])))
