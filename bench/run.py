"""Load benchmark: the gateway beside a direct call, nginx and a FastAPI + httpx proxy.

    .venv/bin/python bench/run.py                 # full: 10 s per path, median of 3
    .venv/bin/python bench/run.py --smoke         # 1 s per path, once: does it still work?

Starts, on free ports of 127.0.0.1 only: the downstream-mock (gunicorn, 2 workers), the
gateway (gunicorn, `--workers`), nginx with upstream keep-alive, and the FastAPI +
httpx baseline (gunicorn, 1 worker). Drives each with wrk for a 100-byte and a 64 KiB
body, then streams 100 MiB down and up through the gateway watching its RSS. Prints one
table and writes JSON. Everything it starts is stopped by PID when it ends, fails or is
interrupted. See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

import loadgen
import servers
import streams
from procs import RssSampler, Service, Stack, StartError, cpu_delta, cpu_seconds

MIB = 1024 * 1024
BODIES = {"100 B": 100, "64 KiB": 64 * 1024}
DEFAULT_JSON = servers.BENCH / "results" / "latest.json"
# Turns the gateway's tracing on, exporting every span to the local sink. The gateway
# has no tracing yet (a later issue); until it has, `--tracing` measures the same work
# as "gateway" and the sink sees no exports, which the report says.
TRACING_ENV = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_TRACES_SAMPLER": "always_on",
    "OTEL_SERVICE_NAME": "gateway-bench",
    "OTEL_BSP_SCHEDULE_DELAY": "500",
}
# CPU that no process of ours used during a run, in % of one core: above this the
# machine was busy with something else and the run's numbers are suspect.
DISTURBED_OTHER_CPU = 15.0


@dataclass(frozen=True)
class Target:
    """One way to reach the mock: directly, or through one of the proxies."""

    key: str
    label: str
    server: str  # the Service whose processes are the proxy ("mock" when direct)
    prefix: str  # "" direct, "/mock" through a proxy

    @property
    def is_proxy(self) -> bool:
        return self.server != "mock"


DIRECT = Target("direct", "direct to mock", "mock", "")
NGINX = Target("nginx", "nginx, upstream keep-alive", "nginx", servers.PREFIX)
GATEWAY = Target("gateway", "gateway", "gateway", servers.PREFIX)
GATEWAY_TRACING = Target(
    "gateway+tracing", "gateway, tracing on (100 %)", "gateway-tracing", servers.PREFIX
)
HTTPX = Target("fastapi-httpx", "FastAPI route + shared httpx", "fastapi-httpx", servers.PREFIX)
TARGETS = [DIRECT, NGINX, GATEWAY, GATEWAY_TRACING, HTTPX]


@dataclass
class Run:
    """One wrk run against one target and body, with what the processes spent on it."""

    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int
    proxy_cpu_us: float | None
    mock_cpu_us: float
    client_cpu_us: float
    proxy_peak_rss: int | None
    other_cpu_pct: float  # CPU busy outside our processes, % of one core
    bytes_per_request: float  # headers + body, from wrk's total


@dataclass
class Row:
    target: str
    label: str
    body: str
    body_bytes: int
    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        values = [getattr(r, name) for r in self.runs if getattr(r, name) is not None]
        return statistics.median(values) if values else None

    def summary(self, direct_rps: float | None) -> dict[str, Any]:
        rps = self.median("rps") or 0.0
        peaks = [r.proxy_peak_rss for r in self.runs if r.proxy_peak_rss is not None]
        return {
            "target": self.target,
            "label": self.label,
            "body": self.body,
            "body_bytes": self.body_bytes,
            "rps": rps,
            "p50_ms": self.median("p50_ms"),
            "p99_ms": self.median("p99_ms"),
            "proxy_cpu_us_per_request": self.median("proxy_cpu_us"),
            "proxy_peak_rss_mib": max(peaks) / MIB if peaks else None,
            "mock_cpu_us_per_request": self.median("mock_cpu_us"),
            "client_cpu_us_per_request": self.median("client_cpu_us"),
            "share_of_direct": rps / direct_rps if direct_rps else None,
            "errors": sum(r.errors for r in self.runs),
            "bytes_per_request": self.median("bytes_per_request"),
            "problems": self.problems,
            "requests": sum(r.requests for r in self.runs),
            "other_cpu_pct_max": max((r.other_cpu_pct for r in self.runs), default=0.0),
            "runs": [asdict(r) for r in self.runs],
        }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the gateway beside a direct call, nginx and FastAPI + httpx."
    )
    parser.add_argument("--smoke", action="store_true", help="1 s per path, once")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (10; smoke 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    parser.add_argument("--workers", type=int, default=1, help="gateway and nginx workers (1)")
    parser.add_argument("--mock-workers", type=int, default=2, help="mock workers (2)")
    parser.add_argument("--repeat", type=int, help="runs per path, median reported (3; smoke 1)")
    parser.add_argument("--warmup", type=int, help="seconds of unmeasured load first (2; smoke 1)")
    parser.add_argument(
        "--only",
        help="comma-separated targets to drive (direct is always included): "
        + ", ".join(t.key for t in TARGETS),
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also drive a gateway with tracing on, exporting to a local OTLP sink",
    )
    parser.add_argument(
        "--stream-mib", type=int, default=100, help="size of the streaming checks (100)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    parser.add_argument(
        "--enforce-budget", action="store_true", help="exit 1 if the gateway misses a target"
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (1 if args.smoke else 10)
    args.repeat = args.repeat or (1 if args.smoke else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    if min(args.duration, args.repeat, args.connections, args.workers, args.stream_mib) < 1:
        parser.error("--duration, --repeat, --connections, --workers, --stream-mib must be >= 1")
    return args


def chosen_targets(args: argparse.Namespace) -> list[Target]:
    if args.only:
        keys = {k.strip() for k in args.only.split(",")} | {"direct"}
        unknown = keys - {t.key for t in TARGETS}
        if unknown:
            raise SystemExit(f"bench: unknown target(s) {sorted(unknown)}")
        if "gateway+tracing" in keys:
            args.tracing = True
    else:
        keys = {t.key for t in TARGETS}
    if not args.tracing:
        keys.discard("gateway+tracing")
    return [t for t in TARGETS if t.key in keys]


def missing_tools() -> list[str]:
    missing = []
    if loadgen.wrk_path() is None:
        missing.append("wrk")
    if servers.nginx_path() is None:
        missing.append("nginx")
    return missing


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def start_servers(stack: Stack, args: argparse.Namespace, targets: list[Target]) -> None:
    keys = {t.key for t in targets}
    mock = servers.start_mock(stack, workers=args.mock_workers)
    stack.wait_ready(mock, servers.READY_PATH)
    if "nginx" in keys:
        servers.start_nginx(stack, mock=mock, workers=args.workers)
    if "gateway" in keys:
        servers.start_gateway(stack, mock=mock, workers=args.workers)
    if "gateway+tracing" in keys:
        sink = servers.start_otlp_sink(stack)
        servers.start_gateway(
            stack,
            mock=mock,
            workers=args.workers,
            name="gateway-tracing",
            extra_env={**TRACING_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.base_url},
        )
    if "fastapi-httpx" in keys:
        servers.start_httpx_baseline(stack, mock=mock)
    for service in stack.services:
        stack.wait_ready(service, servers.READY_PATH)
        if service.name != "otlp-sink":
            # Workers count toward CPU and RSS; wait until all of them are up.
            wait_for_workers(service, args.workers if service.name != "mock" else 1)


def wait_for_workers(service: Service, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(service.workers()) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy, all cores together."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def measure(stack: Stack, target: Target, body: int, *, duration: int, connections: int) -> Run:
    by_name = {s.name: s for s in stack.services}
    proxy = by_name[target.server]
    mock = by_name["mock"]
    url = f"{proxy.base_url}{target.prefix}/bytes/{body}"
    ours = psutil.Process()
    everything = [p for s in stack.services for p in s.group()]
    proxy_before = cpu_seconds(proxy.group())
    mock_before = cpu_seconds(mock.group())
    all_before = cpu_seconds(everything)
    self_before = sum(ours.cpu_times()[:2])
    busy_before = busy_cpu_seconds()
    with RssSampler(proxy, interval=0.05) as rss:
        result = loadgen.run_wrk(url, duration=duration, connections=connections)
    busy = busy_cpu_seconds() - busy_before
    own = cpu_delta(all_before, cpu_seconds(everything)) + sum(ours.cpu_times()[:2]) - self_before
    per_request = 1e6 / result.requests if result.requests else 0.0
    other = max(0.0, busy - own - result.client_cpu)
    return Run(
        rps=result.rps,
        requests=result.requests,
        p50_ms=result.p50 * 1000,
        p99_ms=result.p99 * 1000,
        errors=result.errors,
        proxy_cpu_us=cpu_delta(proxy_before, cpu_seconds(proxy.group())) * per_request
        if target.is_proxy
        else None,
        mock_cpu_us=cpu_delta(mock_before, cpu_seconds(mock.group())) * per_request,
        client_cpu_us=result.client_cpu * per_request,
        proxy_peak_rss=rss.peak if target.is_proxy else None,
        other_cpu_pct=100.0 * other / result.seconds if result.seconds else 0.0,
        bytes_per_request=result.bytes_read / result.requests if result.requests else 0.0,
    )


def drive(stack: Stack, args: argparse.Namespace, targets: list[Target]) -> list[Row]:
    rows = {
        (t.key, name): Row(t.key, t.label, name, size)
        for t in targets
        for name, size in BODIES.items()
    }
    by_name = {s.name: s for s in stack.services}
    for t in targets:
        for name, size in BODIES.items():
            path = f"{t.prefix}/bytes/{size}"
            problem = verify(by_name[t.server], path, size)
            if problem:
                rows[(t.key, name)].problems.append(problem)
            url = by_name[t.server].base_url + path
            loadgen.run_wrk(url, duration=args.warmup, connections=args.connections)
    # Round-robin, so a disturbance (another job on the machine) spreads over every
    # path instead of sinking one.
    for i in range(args.repeat):
        for t in targets:
            for name, size in BODIES.items():
                run = measure(stack, t, size, duration=args.duration, connections=args.connections)
                rows[(t.key, name)].runs.append(run)
                if run.bytes_per_request < size:
                    rows[(t.key, name)].problems.append(
                        f"run {i + 1}: {run.bytes_per_request:,.0f} bytes per response "
                        f"for a {size}-byte body: responses were cut short"
                    )
                progress(f"run {i + 1}/{args.repeat} {t.key:16} {name:7} {run.rps:9,.0f} req/s")
    return list(rows.values())


def verify(server: Service, path: str, size: int, tries: int = 3) -> str | None:
    """Fetch `path` a few times and check status and length: wrk checks neither."""
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return f"GET {path}: {type(exc).__name__}: {exc}"
        finally:
            conn.close()
        if response.status != 200 or len(body) != size:
            return f"GET {path}: status {response.status}, {len(body)} of {size} bytes"
    return None


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def summarise(rows: list[Row]) -> list[dict[str, Any]]:
    direct = {r.body: r.median("rps") for r in rows if r.target == "direct"}
    return [r.summary(direct.get(r.body)) for r in rows]


def check_budget(
    results: list[dict[str, Any]], stream_results: list[streams.StreamResult], workers: int
) -> list[dict[str, Any]]:
    """The issue's targets for the gateway, each with the measured value and a verdict."""
    small = {r["target"]: r for r in results if r["body_bytes"] == 100}
    checks: list[dict[str, Any]] = []
    gateway = small.get("gateway")
    if gateway is not None:
        checks.append(
            _check(
                "gateway CPU per small request",
                gateway["proxy_cpu_us_per_request"],
                400,
                "us",
                lower_is_better=True,
            )
        )
        if workers == 1:
            share = gateway["share_of_direct"]
            checks.append(
                _check(
                    "gateway share of direct, 1 worker",
                    100 * share if share else None,
                    30,
                    "%",
                    lower_is_better=False,
                )
            )
        baseline = small.get("fastapi-httpx")
        if baseline is not None and baseline["rps"]:
            checks.append(
                _check(
                    "gateway req/s over FastAPI + httpx",
                    gateway["rps"] / baseline["rps"],
                    10,
                    "x",
                    lower_is_better=False,
                )
            )
    tracing = small.get("gateway+tracing")
    if tracing is not None:
        checks.append(
            _check(
                "gateway CPU per small request, tracing on",
                tracing["proxy_cpu_us_per_request"],
                600,
                "us",
                lower_is_better=True,
            )
        )
    for s in stream_results:
        checks.append(
            _check(
                f"gateway RSS growth, {s.size // MIB} MiB {s.name}",
                s.rss_growth / MIB,
                20,
                "MiB",
                lower_is_better=True,
                strict=True,
            )
        )
    return checks


def _check(
    name: str,
    value: float | None,
    limit: float,
    unit: str,
    *,
    lower_is_better: bool,
    strict: bool = False,
) -> dict[str, Any]:
    if value is None:
        ok = False
    elif lower_is_better:
        ok = value < limit if strict else value <= limit
    else:
        ok = value >= limit
    relation = ("<" if strict else "<=") if lower_is_better else ">="
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "unit": unit,
        "relation": relation,
        "ok": ok,
    }


# ---------------------------------------------------------------------------- output


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(results: list[dict[str, Any]]) -> str:
    header = [
        "path",
        "body",
        "req/s",
        "p50 ms",
        "p99 ms",
        "proxy CPU us/req",
        "proxy peak RSS MiB",
        "mock CPU us/req",
        "of direct",
        "errors",
    ]
    lines = [header]
    for r in results:
        share = r["share_of_direct"]
        lines.append(
            [
                r["label"],
                r["body"],
                fmt(r["rps"], ",.0f"),
                fmt(r["p50_ms"], ".2f"),
                fmt(r["p99_ms"], ".2f"),
                fmt(r["proxy_cpu_us_per_request"], ",.0f"),
                fmt(r["proxy_peak_rss_mib"], ".1f"),
                fmt(r["mock_cpu_us_per_request"], ",.0f"),
                fmt(100 * share if share is not None else None, ".1f", " %"),
                str(r["errors"]) + (" !" if r["problems"] else ""),
            ]
        )
    return _align(lines, left=2)


def stream_table(stream_results: list[dict[str, Any]]) -> str:
    header = [
        "through the gateway",
        "size",
        "MiB/s",
        "worker RSS before MiB",
        "peak MiB",
        "growth MiB",
        "gateway CPU s",
        "check",
    ]
    lines = [header]
    for s in stream_results:
        lines.append(
            [
                s["name"],
                f"{s['size'] // MIB} MiB",
                f"{s['mib_per_s']:.0f}",
                f"{s['rss_before'] / MIB:.1f}",
                f"{s['rss_peak'] / MIB:.1f}",
                f"{s['rss_growth'] / MIB:.1f}",
                f"{s['proxy_cpu']:.2f}",
                "ok" if s["ok"] else f"FAILED: {s['detail']}",
            ]
        )
    return _align(lines, left=1)


def _align(lines: list[list[str]], *, left: int) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def budget_lines(checks: list[dict[str, Any]]) -> str:
    out = []
    for c in checks:
        value = fmt(c["value"], ",.1f")
        verdict = "met" if c["ok"] else "MISSED"
        out.append(
            f"  {verdict:6}  {c['name']}: {value} {c['unit']} "
            f"(target {c['relation']} {c['limit']:g} {c['unit']})"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(
            f"bench: {' and '.join(missing)} not found. Install them with:\n"
            f"    sudo {servers.NGINX_INSTALL}\n"
            "(or run `make bench`, which installs them).",
            file=sys.stderr,
        )
        return 2
    targets = chosen_targets(args)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    ok = False
    try:
        with Stack(workdir) as stack:
            progress(f"starting servers (logs in {workdir})")
            start_servers(stack, args, targets)
            progress(
                f"driving {len(targets)} targets x {len(BODIES)} bodies, "
                f"{args.repeat} x {args.duration} s each"
            )
            rows = drive(stack, args, targets)
            stream_results = (
                stream_checks(stack, args) if "gateway" in {t.key for t in targets} else []
            )
            tracing_exports = sink_exports(stack)
        results = summarise(rows)
        checks = check_budget(results, stream_results, args.workers)
        report = {
            "meta": meta(args, started, load_before, targets, tracing_exports),
            "results": results,
            "streams": [stream_dict(s) for s in stream_results],
            "budget": checks,
            "skipped": []
            if args.tracing
            else [
                {
                    "target": GATEWAY_TRACING.key,
                    "why": "the gateway has no tracing yet; run with --tracing once it has",
                }
            ],
        }
        write_json(args.json, report)
        print_report(report)
        ok = True
    except (StartError, loadgen.WrkError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"bench: server logs kept in {workdir}", file=sys.stderr)
    if args.enforce_budget and not all(c["ok"] for c in checks):
        return 1
    return 0


def stream_checks(stack: Stack, args: argparse.Namespace) -> list[streams.StreamResult]:
    gateway = next(s for s in stack.services if s.name == "gateway")
    size = args.stream_mib * MIB
    checks: list[Callable[[], streams.StreamResult]] = [
        lambda: streams.download(gateway, size),
        # A client slower than the upstream: only backpressure keeps the gateway from
        # buffering the difference.
        lambda: streams.download(gateway, size, rate=max(size / 2, 50 * MIB)),
        lambda: streams.upload(gateway, size),
    ]
    results = []
    for check in checks:
        result = check()
        progress(
            f"{result.name}: {result.size // MIB} MiB, RSS +{result.rss_growth / MIB:.1f}"
            f" MiB, {'ok' if result.ok else result.detail}"
        )
        results.append(result)
    return results


def sink_exports(stack: Stack) -> int | None:
    sink = next((s for s in stack.services if s.name == "otlp-sink"), None)
    if sink is None:
        return None
    # The gateway flushes its spans on shutdown; stop it first, then ask the sink.
    gateway = next(s for s in stack.services if s.name == "gateway-tracing")
    gateway.popen.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        gateway.popen.wait(timeout=30)
    with urllib.request.urlopen(sink.base_url + "/stats", timeout=5) as response:
        return int(json.load(response)["exports"])


def stream_dict(s: streams.StreamResult) -> dict[str, Any]:
    return {**asdict(s), "rss_growth": s.rss_growth, "mib_per_s": s.mib_per_s}


def meta(
    args: argparse.Namespace,
    started: datetime,
    load_before: tuple[float, float, float],
    targets: list[Target],
    tracing_exports: int | None,
) -> dict[str, Any]:
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeat": args.repeat,
        "connections": args.connections,
        "wrk_threads": 1,
        "gateway_workers": args.workers,
        "nginx_workers": args.workers,
        "mock_workers": args.mock_workers,
        "baseline_workers": 1,
        "targets": [t.key for t in targets],
        "tracing_sink_exports": tracing_exports,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "wrk": tool_version([loadgen.wrk_path() or "wrk", "--version"]),
            "nginx": tool_version([servers.nginx_path() or "nginx", "-v"]),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def print_report(report: dict[str, Any]) -> None:
    m = report["meta"]
    print()
    print(
        f"wrk -t1 -c{m['connections']} -d{m['duration_s']}s, median of {m['repeat']}; "
        f"gateway and nginx {m['gateway_workers']} worker(s), mock {m['mock_workers']}, "
        f"{m['machine']['cpus']} CPUs"
    )
    print(table(report["results"]))
    disturbed = [r for r in report["results"] if r["other_cpu_pct_max"] > DISTURBED_OTHER_CPU]
    if disturbed:
        worst = max(r["other_cpu_pct_max"] for r in disturbed)
        print(
            f"warning: other processes used up to {worst:.0f} % of a core during "
            f"{len(disturbed)} row(s); the machine was not quiet, consider a re-run"
        )
    for r in report["results"]:
        for problem in r["problems"]:
            print(f"PROBLEM {r['target']} {r['body']}: {problem}")
    for skipped in report["skipped"]:
        print(f"not measured: {skipped['target']}: {skipped['why']}")
    exports = m["tracing_sink_exports"]
    if exports is not None:
        note = "" if exports else " (no spans arrived: is tracing implemented?)"
        print(f"tracing: the OTLP sink received {exports} export request(s){note}")
    if report["streams"]:
        print()
        print(stream_table(report["streams"]))
    if report["budget"]:
        print()
        print("budget (issue 7):")
        print(budget_lines(report["budget"]))


if __name__ == "__main__":
    sys.exit(main())
