"""Start-up failures under real gunicorn: a non-zero exit and one line saying why."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
GUNICORN = Path(sys.executable).parent / "gunicorn"
CONFIG = REPO / "services" / "gateway" / "gunicorn.conf.py"
DEFAULT_ROUTES = REPO / "services" / "gateway" / "routes.yaml"
# A healthy start takes about a second; one that never exits is the failure mode we fear.
EXIT_WITHIN_SECONDS = 30


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_gunicorn(tmp_path: Path, **env: str | None) -> tuple[int, str]:
    """Run the gateway as production does; its exit code and all it printed.

    `env` adds variables, or removes them when given None.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
    clean.update(
        {
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            "OTEL_TRACES_EXPORTER": "none",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(unused_port()),
            "GATEWAY_WORKERS": "2",
            "GATEWAY_ROUTES_FILE": str(DEFAULT_ROUTES),
        }
    )
    for name, value in env.items():
        if value is None:
            clean.pop(name, None)
        else:
            clean[name] = value
    (tmp_path / "metrics").mkdir(exist_ok=True)
    process = subprocess.Popen(
        [str(GUNICORN), "-c", str(CONFIG), "gateway.app:create_app()"],
        cwd=REPO,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so a hung master and its workers can be stopped together
    )
    try:
        output, _ = process.communicate(timeout=EXIT_WITHIN_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"gunicorn did not exit within {EXIT_WITHIN_SECONDS} s:\n{output[-3000:]}")
    return process.returncode, output


def assert_one_line_about(output: str, *fragments: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if all(f in line for f in fragments)]
    assert len(lines) == 1, output
    return lines[0]


def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    code, output = run_gunicorn(tmp_path, GATEWAY_PORT="notaport")
    assert code != 0
    line = assert_one_line_about(output, "GATEWAY_PORT")
    assert line.startswith("invalid setting GATEWAY_PORT: ")
    assert "'notaport'" in line


def test_a_missing_route_file_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    code, output = run_gunicorn(tmp_path, GATEWAY_ROUTES_FILE=None)
    assert code != 0
    assert_one_line_about(output, "GATEWAY_ROUTES_FILE")


def test_a_bad_route_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n  - name: broken\n    prefix: /broken\n    upstream: ftp://nowhere\n",
        encoding="utf-8",
    )
    code, output = run_gunicorn(tmp_path, GATEWAY_ROUTES_FILE=str(routes))
    assert code != 0
    line = assert_one_line_about(output, "route 'broken'")
    assert "field upstream" in line
    assert str(routes) in line


def test_a_route_file_that_is_not_there_stops_start_up_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    code, output = run_gunicorn(tmp_path, GATEWAY_ROUTES_FILE=str(missing))
    assert code != 0
    assert_one_line_about(output, str(missing))


def test_a_drain_delay_as_long_as_the_grace_stops_start_up_with_one_line(tmp_path: Path) -> None:
    code, output = run_gunicorn(tmp_path, GATEWAY_DRAIN_DELAY="30", GATEWAY_GRACEFUL_TIMEOUT="30")
    assert code != 0
    line = assert_one_line_about(output, "GATEWAY_DRAIN_DELAY", "GATEWAY_GRACEFUL_TIMEOUT")
    assert line.startswith("invalid settings: GATEWAY_DRAIN_DELAY (30) must be less than")
