"""What only the compose stack can show: containers, their users, their files, their logs.

Run by scripts/e2e-compose.sh after tests/e2e, against the stack it started. It finds the
stack through the variables `docker compose` itself reads (`COMPOSE_FILE`,
`COMPOSE_PROJECT_NAME`) plus `LOGS_DIR` (the host directory bind-mounted at /app/logs)
and `E2E_BASE_URL` (the gateway's published address). Without them every test fails:
a run that cannot see its stack must not look green.

The restart test runs last: it replaces the gateway's process.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVICES = ("gateway", "downstream-mock")
APP_UID = 10001
REQUIRED_LOG_FIELDS = frozenset({"ts", "level", "logger", "msg"})
ACCESS_LOG_FIELDS = frozenset({"method", "route", "status", "duration_ms", "client"})
READY_SECONDS = 60.0


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(
            f"{name} is not set: tests/compose checks a running compose stack and is run by "
            "scripts/e2e-compose.sh, which sets COMPOSE_FILE, COMPOSE_PROJECT_NAME, LOGS_DIR "
            "and E2E_BASE_URL",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="module")
def base_url() -> str:
    _env("COMPOSE_FILE")
    _env("COMPOSE_PROJECT_NAME")
    return _env("E2E_BASE_URL").rstrip("/")


@pytest.fixture(scope="module")
def logs_dir() -> Path:
    return Path(_env("LOGS_DIR"))


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`docker compose ARGS` for the stack under test (project and file from the env)."""
    return subprocess.run(
        ["docker", "compose", *args], capture_output=True, text=True, check=check, timeout=120
    )


def container_id(service: str) -> str:
    ids = compose("ps", "-q", service).stdout.split()
    assert len(ids) == 1, f"expected one running {service} container, got {ids}"
    return ids[0]


def inspect(service: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "inspect", container_id(service)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    info = json.loads(out)[0]
    assert isinstance(info, dict)
    return info


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines log, parsed; a line that is not a JSON object fails."""
    assert path.is_file(), f"{path} does not exist on the host"
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{path}:{number} is not JSON: {line[:200]!r}", pytrace=False)
        assert isinstance(entry, dict), f"{path}:{number} is not a JSON object: {line[:200]}"
        missing = REQUIRED_LOG_FIELDS - entry.keys()
        assert not missing, f"{path}:{number} lacks {sorted(missing)}: {line[:200]}"
        entries.append(entry)
    return entries


def access_lines(entries: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("request_id") == request_id and "status" in e]


def wait_for_access_line(path: Path, request_id: str) -> dict[str, Any]:
    """The access line for `request_id` in `path` (file handlers flush per line, but the
    line is written after the response has gone out, so give it a moment)."""
    deadline = time.monotonic() + 10
    while True:
        found = access_lines(read_log(path), request_id) if path.exists() else []
        if found or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    assert len(found) == 1, f"expected one access line with request_id {request_id} in {path}"
    return found[0]


def get_echo(base_url: str) -> str:
    """One request through the gateway to the mock; returns its X-Request-ID."""
    request_id = f"compose-{uuid.uuid4().hex}"
    response = httpx.get(f"{base_url}/mock/echo", headers={"X-Request-ID": request_id}, timeout=10)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["x-request-id"] == request_id
    return request_id


def wait_healthy(service: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    status = "?"
    while time.monotonic() < deadline:
        status = inspect(service)["State"].get("Health", {}).get("Status", "none")
        if status == "healthy":
            return
        time.sleep(1)
    pytest.fail(f"{service} not healthy within {READY_SECONDS:.0f} s (last: {status})")


@pytest.mark.parametrize("service", SERVICES)
def test_docker_reports_healthy(base_url: str, service: str) -> None:
    info = inspect(service)
    assert info["State"]["Status"] == "running", info["State"]
    health = info["State"].get("Health")
    assert health is not None, f"{service} has no healthcheck"
    assert health["Status"] == "healthy", health


@pytest.mark.parametrize("service", SERVICES)
def test_runs_as_uid_10001(base_url: str, service: str) -> None:
    info = inspect(service)
    assert info["Config"]["User"] == f"{APP_UID}:{APP_UID}", info["Config"]["User"]
    for flag in ("-u", "-g"):
        out = compose("exec", "-T", service, "id", flag).stdout.strip()
        assert out == str(APP_UID), f"{service}: id {flag} says {out}"
    # The processes themselves, seen from the host: the gunicorn master (PID 1 in the
    # container) and its workers, real, effective, saved and filesystem uid all 10001.
    master = info["State"]["Pid"]
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert children, f"{service}: gunicorn master {master} has no workers"
    for pid in [master, *map(int, children)]:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == [str(APP_UID)] * 4, f"{service} pid {pid}: {uids}"


@pytest.mark.parametrize("service", SERVICES)
def test_root_filesystem_is_read_only(base_url: str, service: str) -> None:
    assert inspect(service)["HostConfig"]["ReadonlyRootfs"] is True
    # Even root in the container cannot write to /: the filesystem says no, not the
    # permissions. The app user can write where it must, and nowhere else.
    probe = (
        "import sys\n"
        "try:\n"
        "    open(sys.argv[1], 'w').close()\n"
        "except OSError as exc:\n"
        "    print(exc.strerror)\n"
        "else:\n"
        "    print('written')\n"
    )

    def try_write(path: str, *user: str) -> str:
        return compose("exec", "-T", *user, service, "python", "-c", probe, path).stdout.strip()

    assert try_write("/probe", "-u", "0") == "Read-only file system"
    assert try_write("/app/probe") in ("Read-only file system", "Permission denied")
    assert try_write("/tmp/probe") == "written"
    assert try_write("/app/logs/probe") == "written"
    compose("exec", "-T", service, "rm", "-f", "/tmp/probe", "/app/logs/probe")


def test_only_the_gateway_is_published_and_only_on_loopback(base_url: str) -> None:
    bindings = inspect("gateway")["HostConfig"]["PortBindings"]
    assert set(bindings) == {"8080/tcp"}, bindings
    assert all(b["HostIp"] == "127.0.0.1" for b in bindings["8080/tcp"]), bindings
    assert not inspect("downstream-mock")["HostConfig"]["PortBindings"]


def test_api_log_is_json_lines_on_the_host(base_url: str, logs_dir: Path) -> None:
    request_id = get_echo(base_url)
    gateway_line = wait_for_access_line(logs_dir / "gateway" / "api.log", request_id)
    assert gateway_line.keys() >= ACCESS_LOG_FIELDS, gateway_line
    assert gateway_line["status"] == 200, gateway_line
    assert gateway_line["route"] == "mock", gateway_line
    # The same request id reached the mock, whose log is on the host too.
    mock_line = wait_for_access_line(logs_dir / "downstream-mock" / "api.log", request_id)
    assert mock_line["status"] == 200, mock_line


def test_api_log_survives_a_restart(base_url: str, logs_dir: Path) -> None:
    """Runs last: it restarts the gateway."""
    log = logs_dir / "gateway" / "api.log"
    before_id = get_echo(base_url)
    wait_for_access_line(log, before_id)
    lines_before = len(read_log(log))
    pid_before = inspect("gateway")["State"]["Pid"]

    compose("restart", "gateway")
    wait_healthy("gateway")
    assert inspect("gateway")["State"]["Pid"] != pid_before, "the gateway did not restart"

    after_id = get_echo(base_url)
    wait_for_access_line(log, after_id)
    entries = read_log(log)
    assert len(entries) > lines_before, "api.log did not grow after the restart"
    assert access_lines(entries, before_id), "lines written before the restart are gone"
