"""NOTES.txt and the `helm test` pod, whose script is run here against a stand-in gateway."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from .conftest import Manifests, Renderer, container, pod_spec


def test_notes_print_the_port_forward_line(render: Renderer) -> None:
    notes = render.notes()
    assert "kubectl --namespace apps port-forward svc/platform-gateway 8080:80" in notes
    assert "curl -i http://127.0.0.1:8080/mock/echo" in notes
    assert "helm test platform --namespace apps" in notes
    assert "WARNING" not in notes


def test_notes_follow_the_name_and_port(render: Renderer) -> None:
    notes = render.notes(fullnameOverride="edge", gateway__service__port=8000)
    assert "port-forward svc/edge-gateway 8080:8000" in notes


def test_notes_warn_when_prometheus_is_fenced_out(render: Renderer) -> None:
    notes = render.notes(serviceMonitor__enabled=True)
    assert "networkPolicy.metrics.from is empty" in notes


def test_the_test_pod_is_a_helm_test_hook(default: Manifests) -> None:
    pod = default.get("Pod", "platform-test-gateway")
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert pod_spec(pod)["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test"


def test_the_test_pod_uses_the_gateway_image_and_python(default: Manifests) -> None:
    pod = container(default.get("Pod", "platform-test-gateway"))
    gateway = container(default.get("Deployment", "platform-gateway"))
    assert pod["image"] == gateway["image"]
    assert pod["command"] == ["python3", "-c"]
    assert 'BASE = "http://platform-gateway:80"' in pod["args"][0]


def test_no_test_pod_when_disabled(render: Renderer) -> None:
    assert not render(tests__enabled=False).of_kind("Pod")


class StandIn(BaseHTTPRequestHandler):
    """Answers like the gateway in front of the mock, or (broken=True) like a gateway
    whose /mock route reaches the wrong place."""

    broken = False

    def do_GET(self) -> None:
        if self.path == "/readyz":
            self._json({"status": "ready"})
        elif self.path.startswith("/mock/echo"):
            path, _, query = self.path.partition("?")
            echoed = path if self.broken else path.removeprefix("/mock")
            self._json(
                {
                    "method": "GET",
                    "path": echoed,
                    "query": query,
                    "headers": {"x-request-id": "abc"},
                }
            )
        else:
            self.send_error(404)

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def stand_in(broken: bool) -> Iterator[str]:
    handler = type("Handler", (StandIn,), {"broken": broken})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_test_script(manifests: Manifests, base: str) -> subprocess.CompletedProcess[str]:
    script = container(manifests.get("Pod", "platform-test-gateway"))["args"][0]
    script, count = re.subn(r'BASE = "[^"]*"', f'BASE = "{base}"', script)
    assert count == 1
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_test_script_passes_against_a_working_gateway(default: Manifests) -> None:
    with stand_in(broken=False) as base:
        result = run_test_script(default, base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GET /readyz -> 200" in result.stdout
    assert "GET /mock/echo -> 200" in result.stdout
    assert result.stdout.rstrip().endswith("PASS")


@pytest.mark.timeout(60)
def test_the_test_script_fails_when_the_route_is_wrong(default: Manifests) -> None:
    with stand_in(broken=True) as base:
        result = run_test_script(default, base)
    assert result.returncode != 0
    assert "AssertionError" in result.stderr
    assert "PASS" not in result.stdout
