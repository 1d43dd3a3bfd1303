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
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import loadgen
import servers
from procs import Stack

RESULTS = servers.BENCH / "results"

# First match wins, checked from the leaf up: a sample's own time goes to the layer of
# the innermost frame that belongs to one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("access log (logging, JSON formatter)", ("logging/", "servicekit/logs.py", "json/")),
    ("request id + access-log middleware", ("servicekit/middleware.py", "uuid.py")),
    ("gateway: headers", ("gateway/headers.py",)),
    ("gateway: path normalise + route match", ("gateway/paths.py", "gateway/routing.py")),
    ("gateway: dispatcher + proxy", ("gateway/dispatcher.py", "gateway/proxy.py")),
    ("gateway: upstream client seam", ("gateway/upstream",)),
    ("aiohttp client (+ yarl, multidict)", ("aiohttp/", "yarl/", "multidict/")),
    ("httpx / httpcore / anyio client", ("httpx/", "httpcore/", "anyio/", "sniffio/", "h11/")),
    (
        "FastAPI / Starlette (incl. FastAPI's native telemetry check)",
        ("fastapi/", "starlette/", "pydantic", "opentelemetry/", "<frozen os>"),
    ),
    ("uvicorn server (httptools protocol, ASGI glue)", ("uvicorn/",)),
    ("baseline app", ("fastapi_httpx.py",)),
    # The loop's own frame as the leaf: uvloop's C code (poll, socket reads, callbacks).
    ("event loop (uvloop C code: poll, socket reads, scheduling)", ("asyncio/runners.py",)),
    ("asyncio / contextlib glue", ("asyncio/", "contextlib.py", "<frozen _collections_abc>")),
]


def layer_of(frame: str) -> str | None:
    for name, needles in LAYERS:
        if any(n in frame for n in needles):
            return name
    return None


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
        total += count
        leaf_layer = next((lay for f in reversed(frames) if (lay := layer_of(f))), "other")
        own_layer[leaf_layer] += count
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
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["gateway", "fastapi-httpx", "mock"], default="gateway")
    parser.add_argument("--body", type=int, default=100, help="bytes per response (100)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of sampling (20)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=200, help="samples per second (200)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy binary")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    collapsed = RESULTS / f"profile-{args.target}-{args.body}.txt"
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        with Stack(workdir) as stack:
            mock = servers.start_mock(stack, workers=2)
            stack.wait_ready(mock, servers.READY_PATH)
            if args.target == "gateway":
                proxy = servers.start_gateway(stack, mock=mock, workers=1)
            elif args.target == "fastapi-httpx":
                proxy = servers.start_httpx_baseline(stack, mock=mock)
            else:
                proxy = mock
            stack.wait_ready(proxy, servers.READY_PATH)
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
                    "--nonblocking",
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
