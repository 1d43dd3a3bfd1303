"""Drive a URL with wrk and read its `--latency` report.

wrk (Debian package `wrk`) is an event-driven C load generator: one thread keeps 32
connections busy at a fraction of the CPU a Python client would need, which matters on
a 2-core machine where the client competes with the servers it measures.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
from dataclasses import dataclass

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LATENCY_LINE = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_REQUESTS = re.compile(
    r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)(B|KB|MB|GB|TB) read", re.M
)
_SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes_read: int  # as wrk reports it: three significant digits
    p50: float  # seconds
    p99: float
    non_2xx: int
    socket_errors: int
    client_cpu: float  # wrk's own user + system seconds

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def wrk_path() -> str | None:
    return shutil.which("wrk")


def parse(output: str, client_cpu: float = 0.0) -> WrkResult:
    """Read wrk's `--latency` text report; raises `WrkError` if a part is missing."""
    latencies = {m[0]: float(m[1]) * _UNITS[m[2]] for m in _LATENCY_LINE.findall(output)}
    done = _REQUESTS.search(output)
    if done is None or "50" not in latencies or "99" not in latencies:
        raise WrkError(f"cannot read wrk's report:\n{output}")
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET_ERRORS.search(output)
    return WrkResult(
        requests=int(done[1]),
        seconds=float(done[2]) * _UNITS[done[3]],
        bytes_read=round(float(done[4]) * _SIZES[done[5]]),
        p50=latencies["50"],
        p99=latencies["99"],
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        client_cpu=client_cpu,
    )


def run_wrk(url: str, *, duration: float, connections: int, threads: int = 1) -> WrkResult:
    """One wrk run against `url` (loopback only), bounded by `duration` plus a margin."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the benchmark only sends traffic to 127.0.0.1, not {url}")
    wrk = wrk_path()
    if wrk is None:
        raise WrkError("wrk is not installed")
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        url,
    ]
    # wrk is the only child we reap during the run, so the change in our children's
    # rusage is wrk's own CPU time.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration + 30:.0f} s: {argv}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse(done.stdout, client_cpu)
