"""A local OTLP/HTTP sink for the "gateway + tracing" path: accepts, counts, discards.

    python bench/otlp_sink.py --port 4318

`POST /v1/traces` (also /v1/metrics, /v1/logs) gets an empty 200 protobuf answer, which
is a valid `Export*ServiceResponse`; `GET /stats` says how many exports and bytes came
in, so the benchmark can check that spans were really exported; `GET /readyz` is 200.
stdlib only, on 127.0.0.1 only, so it costs the measured machine as little as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json

MAX_BODY = 64 * 1024 * 1024


class Sink:
    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length > MAX_BODY:
                    return
                if length:
                    await reader.readexactly(length)
                status, content_type, body = self.answer(method, target, length)
                writer.write(
                    f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
                    f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    def answer(self, method: str, target: str, length: int) -> tuple[str, str, bytes]:
        path = target.split("?", 1)[0]
        if method == "POST" and path.startswith("/v1/"):
            self.exports += 1
            self.bytes += length
            return "200 OK", "application/x-protobuf", b""
        if path == "/stats":
            stats = {"exports": self.exports, "bytes": self.bytes}
            return "200 OK", "application/json", json.dumps(stats).encode()
        if path == "/readyz":
            return "200 OK", "text/plain", b"ready\n"
        return "404 Not Found", "text/plain", b"not found\n"


async def serve(port: int) -> None:
    sink = Sink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
