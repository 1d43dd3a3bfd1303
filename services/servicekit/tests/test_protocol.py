"""The guarded protocol on a real uvicorn server on loopback, spoken to with raw bytes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.types import Receive, Scope, Send
from uvicorn.config import Config

from servicekit.drain import DrainingServer
from servicekit.health import HealthState
from servicekit.policy import HeadLimits, ServerPolicy
from servicekit.problem import PROBLEM_CONTENT_TYPE
from servicekit.protocol import GuardedHttpToolsProtocol

LIMITS = HeadLimits(max_count=10, max_bytes=4096, timeout=0.5)
KEEP_ALIVE = 1


@dataclass
class Recorder:
    """An app that answers 200 "ok" and remembers each request's path and headers."""

    seen: list[tuple[str, list[tuple[bytes, bytes]]]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.seen.append((scope["path"], list(scope["headers"])))
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


@dataclass
class Running:
    server: DrainingServer
    port: int
    app: Recorder

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            yield reader, writer
        finally:
            writer.close()


@asynccontextmanager
async def serving(limits: HeadLimits = LIMITS) -> AsyncIterator[Running]:
    app = Recorder()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = Config(
        app,
        http=GuardedHttpToolsProtocol,
        lifespan="off",
        log_config=None,
        timeout_keep_alive=KEEP_ALIVE,
    )
    config.load()
    server = DrainingServer(config, ServerPolicy(HealthState(), 0, limits), graceful_timeout=5)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        yield Running(server, sock.getsockname()[1], app)
    finally:
        await server.shutdown()
        sock.close()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection."""
    async with asyncio.timeout(5):
        return await reader.read()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    return int(lines[0].split()[1]), headers, body


def get(path: str = "/", *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_problem(raw: bytes, status: int, slug: str) -> None:
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["type"] == f"urn:platform:problem:{slug}"


async def test_requests_pass_and_keep_alive_works() -> None:
    async with serving() as running, running.connect() as (reader, writer):
        for _ in range(2):
            writer.write(get())
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"ok")
            assert "connection" not in headers
    assert len(running.app.seen) == 2


async def drip(writer: asyncio.StreamWriter, data: bytes, *, every: float, size: int) -> None:
    """Send `data` `size` bytes at a time; stop quietly when the server hangs up."""
    try:
        for start in range(0, len(data), size):
            writer.write(data[start : start + size])
            await writer.drain()
            await asyncio.sleep(every)
    except ConnectionError:
        pass


async def test_a_huge_header_is_431_before_it_is_buffered() -> None:
    # 64 KiB, never finished: the refusal must come while it arrives, not at its end.
    head = b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 64 * 1024
    async with serving() as running, running.connect() as (reader, writer):
        sending = asyncio.create_task(drip(writer, head, every=0.002, size=1024))
        raw = await read_all(reader)
        sent_all = sending.done()
        sending.cancel()
    assert_problem(raw, 431, "headers-too-large")
    assert not sent_all
    assert running.app.seen == []


async def test_a_header_over_the_limit_in_one_piece_is_431() -> None:
    async with serving() as running, running.connect() as (reader, writer):
        writer.write(get("/", "x-big: " + "a" * 5000))
        raw = await read_all(reader)
    assert_problem(raw, 431, "headers-too-large")
    assert running.app.seen == []


async def test_the_byte_limit_counts_names_values_and_the_target() -> None:
    # "/" (1) + "host: test" (4 + 4 + 4) + "x-fill: ..." (6 + n + 4)
    fits = 4096 - 1 - 12 - 10
    async with serving() as running:
        async with running.connect() as (reader, writer):
            writer.write(get("/", "x-fill: " + "a" * fits))
            assert (await read_response(reader))[0] == 200
        async with running.connect() as (reader, writer):
            writer.write(get("/", "x-fill: " + "a" * (fits + 1)))
            assert_problem(await read_all(reader), 431, "headers-too-large")


async def test_too_many_headers_is_431() -> None:
    async with serving() as running:
        async with running.connect() as (reader, writer):
            writer.write(get("/", *(f"x-{i}: v" for i in range(9))))  # 10 with host
            assert (await read_response(reader))[0] == 200
        async with running.connect() as (reader, writer):
            writer.write(get("/", *(f"x-{i}: v" for i in range(10))))
            assert_problem(await read_all(reader), 431, "headers-too-large")
    assert len(running.app.seen) == 1


async def test_a_slow_head_is_408_even_while_bytes_trickle_in() -> None:
    head = b"GET / HTTP/1.1\r\nhost: test\r\nx-slow: abcdefghijklmnopqrstuvwxyz"
    async with serving() as running, running.connect() as (reader, writer):
        started = time.monotonic()
        sending = asyncio.create_task(drip(writer, head, every=0.05, size=1))
        raw = await read_all(reader)
        took = time.monotonic() - started
        sending.cancel()
    assert_problem(raw, 408, "request-head-timeout")
    assert LIMITS.timeout <= took < LIMITS.timeout + 1.0
    assert running.app.seen == []


async def test_a_connection_that_sends_nothing_closes_like_an_idle_one() -> None:
    async with serving() as running, running.connect() as (reader, _):
        started = time.monotonic()
        raw = await read_all(reader)
        took = time.monotonic() - started
    assert raw == b""  # no request, no answer
    assert KEEP_ALIVE - 0.2 <= took < KEEP_ALIVE + 1.0


async def test_the_next_head_on_a_kept_alive_connection_has_a_deadline_too() -> None:
    async with serving() as running, running.connect() as (reader, writer):
        writer.write(get())
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET / HTTP/1.1\r\nhost: te")
        started = time.monotonic()
        raw = await read_all(reader)
        assert time.monotonic() - started < LIMITS.timeout + 1.0
    assert_problem(raw, 408, "request-head-timeout")


async def test_a_head_that_is_not_http_is_400_problem() -> None:
    async with serving() as running, running.connect() as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nhost: test\r\nbad header: x\r\n\r\n")
        raw = await read_all(reader)
    assert_problem(raw, 400, "malformed-request")
    assert running.app.seen == []


async def test_pipelined_requests_are_all_answered() -> None:
    async with serving() as running, running.connect() as (reader, writer):
        writer.write(get("/one") + get("/two"))
        assert (await read_response(reader))[0] == 200
        assert (await read_response(reader))[0] == 200
    assert [path for path, _ in running.app.seen] == ["/one", "/two"]


async def test_while_draining_responses_close_their_connection() -> None:
    async with serving() as running, running.connect() as (reader, writer):
        writer.write(get())
        assert "connection" not in (await read_response(reader))[1]
        running.server.guarded_state.draining = True
        writer.write(get())
        status, headers, body = parse(await read_all(reader))
    assert (status, body) == (200, b"ok")
    assert headers["connection"] == "close"


async def test_chunked_trailers_reach_the_scope_after_the_app_started() -> None:
    # Why the gateway copies the header list before checking it: uvicorn appends trailer
    # fields to the list the scope already holds.
    async with serving() as running, running.connect() as (reader, writer):
        writer.write(
            b"POST / HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\nx-late: 1\r\n\r\n"
        )
        assert (await read_response(reader))[0] == 200
    _, headers = running.app.seen[0]
    assert (b"x-late", b"1") in headers


async def test_a_request_the_parser_refuses_after_its_head_never_reaches_the_app() -> None:
    # llhttp calls on_headers_complete (uvicorn creates the app's task) and only then
    # refuses a Transfer-Encoding whose last coding is not chunked.
    async with serving() as running, running.connect() as (reader, writer):
        writer.write(
            b"POST / HTTP/1.1\r\nhost: test\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n"
        )
        raw = await read_all(reader)
        await asyncio.sleep(0.05)  # were the app task still alive, it would run now
    assert_problem(raw, 400, "malformed-request")
    assert running.app.seen == []
