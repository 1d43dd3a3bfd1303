"""Where a proxy worker's time goes under load: py-spy on the worker while wrk drives it.

    .venv/bin/python bench/profile_worker.py                       # the gateway, 100 B
    .venv/bin/python bench/profile_worker.py --target fastapi-httpx --body 65536

Starts the mock and one proxy like bench/run.py does (1 worker), drives it with wrk
-t1 -c32, and samples the worker with `py-spy record` (not a project dependency:
install it anywhere, e.g. `python3 -m venv /tmp/prof && /tmp/prof/bin/pip install
py-spy`, and pass `--py-spy /tmp/prof/bin/py-spy` or put it on PATH). Prints the share
of samples by layer and the top functions by own time and by inclusive time, and keeps
the collapsed stacks (flamegraph input) in bench/results/.

py-spy samples Python frames only: time in C (uvloop's loop and socket calls, httptools'
parser, the JSON encoder) counts toward the Python function that called into it.
Samples where the worker sits idle in the event loop's poll are not recorded.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import loadgen
import servers
from procs import Stack, terminate_on_signals

RESULTS = servers.BENCH / "results"

# A sample whose stack holds one of these frames belongs to that layer whatever its
# leaf: the work is done on that frame's behalf.
OWNERS: list[tuple[str, str]] = [
    ("FastAPI's per-request telemetry check (os.environ lookups)", "NativeTelemetry.enabled"),
    ("access log (LogRecord, JSON formatter, write)", "AccessLogMiddleware._log"),
]
# Otherwise the first layer that claims a frame, from the leaf up, gets the sample.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("logging, JSON (other log lines)", ("/logging/", "servicekit/logs.py", "/json/")),
    (
        "metrics (prometheus_client, multiprocess files)",
        (
            "/prometheus_client/",
            "servicekit/metrics.py",
            "gateway/metrics.py",
        ),
    ),
    ("tracing (OpenTelemetry SDK, server span)", ("/opentelemetry/", "servicekit/server_span.py")),
    ("request id + access-log middleware", ("servicekit/middleware.py", "/uuid.py")),
    ("gateway: headers", ("gateway/headers.py",)),
    ("gateway: path normalise + route match", ("gateway/paths.py", "gateway/routing.py")),
    ("gateway: dispatcher + proxy", ("gateway/dispatcher.py", "gateway/proxy.py")),
    ("gateway: HTTP/1.1 upstream client (+ httptools)", ("gateway/h1_", "gateway/upstream_h1")),
    ("gateway: upstream client seam", ("gateway/upstream",)),
    ("aiohttp client (+ yarl, multidict)", ("/aiohttp/", "/yarl/", "/multidict/")),
    # httpcore retrying `import sniffio` where it is not installed.
    ("import system (failed imports retried)", ("<frozen importlib", "/sniffio/", "sniffio.py")),
    ("httpx / httpcore / anyio client", ("/httpx/", "/httpcore/", "/anyio/", "/h11/")),
    ("FastAPI / Starlette", ("/fastapi/", "/starlette/", "/pydantic")),
    ("uvicorn server (httptools protocol, ASGI glue)", ("/uvicorn/",)),
    ("baseline app", ("fastapi_httpx.py",)),
    # The loop's own frame as the leaf: uvloop's C code (poll, socket reads, callbacks).
    ("event loop (uvloop C code: poll, socket reads, scheduling)", ("asyncio/runners.py",)),
    ("asyncio / contextlib glue", ("/asyncio/", "/contextlib.py", "<frozen ")),
]


# Leaves that are a thread sleeping; py-spy does not always see them as idle.
_WAITS = ("Condition.wait (", "Event.wait (", "_wait_for_tstate_lock (")
_PATH_ROOT = re.compile(r"^.*?(site-packages/|/src/|/lib/python3\.\d+/|/bench/)")


def layer_of(frame: str) -> str | None:
    for name, needles in LAYERS:
        if any(n in frame for n in needles):
            return name
    return None


def layer_of_stack(frames: list[str]) -> str:
    for name, needle in OWNERS:
        if any(needle in f for f in frames):
            return name
    return next((lay for f in reversed(frames) if (lay := layer_of(f))), "other")


def summarise(collapsed: Path, top: int) -> str:
    """Layer shares, top own-time and top inclusive-time functions from py-spy raw output."""
    own_layer: Counter[str] = Counter()
    own_func: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any(w in frames[-1] for w in _WAITS):
            continue  # a thread (the span exporter's) asleep on a condition, not working
        total += count
        own_layer[layer_of_stack(frames)] += count
        own_func[_short(frames[-1])] += count
        for func in {_short(f) for f in frames}:
            inclusive[func] += count
    if not total:
        return "no samples: was the worker busy?"
    out = [f"{total} samples (the worker on CPU, not idle)", "", "own time by layer:"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in own_layer.most_common()]
    out += ["", f"top {top} functions by own time:"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in own_func.most_common(top)]
    out += ["", f"top {top} functions by inclusive time:"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def _short(frame: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    path = _PATH_ROOT.sub("", path)
    return f"{func} ({path})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        choices=["gateway", "gateway+tracing", "fastapi-httpx", "fastapi-httpx-nosniffio", "mock"],
        default="gateway",
    )
    parser.add_argument(
        "--pythonpath", help="profile a gateway variant: modified sources in this directory"
    )
    parser.add_argument("--body", type=int, default=100, help="bytes per response (100)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of sampling (20)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=200, help="samples per second (200)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy binary")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--summarise", type=Path, metavar="FILE", help="only summarise collapsed stacks in FILE"
    )
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise, args.top))
        return 0
    if not args.py_spy:
        print(
            "profile_worker: py-spy not found; install it outside the project, e.g.\n"
            "    python3 -m venv /tmp/prof && /tmp/prof/bin/pip install py-spy\n"
            "and pass --py-spy /tmp/prof/bin/py-spy",
            file=sys.stderr,
        )
        return 2
    if loadgen.wrk_path() is None:
        print(f"profile_worker: wrk not found: {servers.NGINX_INSTALL}", file=sys.stderr)
        return 2
    terminate_on_signals()
    RESULTS.mkdir(parents=True, exist_ok=True)
    variant = "-variant" if args.pythonpath else ""
    collapsed = RESULTS / f"profile-{args.target}{variant}-{args.body}.txt"
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        with Stack(workdir) as stack:
            mock = servers.start_mock(stack, workers=2)
            stack.wait_ready(mock, servers.READY_PATH)
            proxy = mock
            if args.target != "mock":
                tracing = args.target == "gateway+tracing"
                sink = servers.start_otlp_sink(stack) if tracing else None
                proxy = servers.start_proxy(
                    stack,
                    "gateway" if tracing else args.target,
                    name=args.target,
                    mock=mock,
                    workers=1,
                    otlp_endpoint=sink.base_url if sink else None,
                    pythonpath=args.pythonpath,
                )
            for service in stack.services:
                stack.wait_ready(service, servers.READY_PATH)
            prefix = "" if proxy is mock else servers.PREFIX
            url = f"{proxy.base_url}{prefix}/bytes/{args.body}"
            loadgen.run_wrk(url, duration=2, connections=args.connections)  # warm-up
            worker = proxy.workers()[0]
            load = threading.Thread(
                target=loadgen.run_wrk,
                args=(url,),
                kwargs={"duration": args.duration + 2, "connections": args.connections},
                daemon=True,
            )
            load.start()
            subprocess.run(
                [
                    args.py_spy,
                    "record",
                    "--pid",
                    str(worker.pid),
                    "--duration",
                    str(args.duration),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--output",
                    str(collapsed),
                    "--full-filenames",
                ],
                check=True,
                timeout=args.duration + 60,
                capture_output=True,
            )
            load.join(timeout=args.duration + 40)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{args.target}, {args.body}-byte body, wrk -t1 -c{args.connections}; "
        f"collapsed stacks in {collapsed}"
    )
    print(summarise(collapsed, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
