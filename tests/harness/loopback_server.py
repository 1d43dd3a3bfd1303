"""An HTTP server of the test's own, on a free 127.0.0.1 port, served from a daemon thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps connections alive and logs nothing."""

    protocol_version = "HTTP/1.1"  # the clients (exporters, the gateway) keep connections

    def answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest output is for failures


class LoopbackServer:
    """`handler` behind a ThreadingHTTPServer on 127.0.0.1; `start` serves, `stop` ends it.

    A test's server subclasses it and hands its handler (a `QuietHandler`) to `__init__`.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, started or not
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
