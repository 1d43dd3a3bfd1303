"""`pin_worker_pid`, in real processes: a parent standing in for the gunicorn master
forks a child that pins its pid and counts, as a worker does after `post_fork`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from servicekit.metrics import MULTIPROC_ENV, pin_worker_pid

# The parent optionally makes a metric value of its own first (a master that should
# not have), then forks; the child pins, counts, and reports what it saw.
_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from prometheus_client import CollectorRegistry, Counter
    from servicekit.metrics import pin_worker_pid

    if sys.argv[1] == "master-counts":
        Counter("master_made", "made before fork", registry=CollectorRegistry()).inc()
    child = os.fork()
    if child == 0:
        pinned = pin_worker_pid()
        counter = Counter("worker_requests", "counted", registry=CollectorRegistry())
        calls = []
        # prometheus_client bound os.getpid at import; a profiler sees the C calls.
        def profile(frame, event, arg):
            if event == "c_call" and arg is os.getpid:
                calls.append(1)
        sys.setprofile(profile)
        for _ in range(1000):
            counter.inc()
        sys.setprofile(None)
        print(f"{os.getpid()} {pinned} {len(calls)}", flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    """
)


def run(tmp_path: Path, mode: str) -> tuple[int, bool, int]:
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {**os.environ, MULTIPROC_ENV: str(directory)}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid, pinned, getpid_calls = result.stdout.split()
    return int(pid), pinned == "True", int(getpid_calls)


def test_a_pinned_worker_counts_without_asking_for_its_pid(tmp_path: Path) -> None:
    pid, pinned, getpid_calls = run(tmp_path, "master-idle")
    assert pinned
    assert getpid_calls == 0
    # The samples are still in this worker's own file, where a scrape finds them.
    assert (tmp_path / "metrics" / f"counter_{pid}.db").exists()


def test_not_pinned_when_the_master_made_metric_values(tmp_path: Path) -> None:
    pid, pinned, getpid_calls = run(tmp_path, "master-counts")
    assert not pinned
    assert getpid_calls == 1000  # prometheus_client's own fork check, every time
    assert (tmp_path / "metrics" / f"counter_{pid}.db").exists()


def test_nothing_to_pin_without_a_multiprocess_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    assert pin_worker_pid() is False
