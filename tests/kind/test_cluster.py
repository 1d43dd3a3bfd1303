"""What only a cluster can show: the chart as installed on kind (`make e2e-kind`).

tests/e2e knows only a base URL; this module also talks to the Kubernetes API (the
`kubernetes` client, current kubeconfig context) and reads the release's manifest with
`helm get manifest`. It checks that every pod of the release is Ready, that the probes
the pods run are the ones the chart declares, that the NetworkPolicy keeps the mock
closed to anything but the gateway, and that a `rollout restart` of the gateway under
load drops no request: the preStop wait, readiness and gunicorn's drain, together.

Settings: KIND_RELEASE and KIND_NAMESPACE (both `platform`), E2E_BASE_URL (the gateway,
http://127.0.0.1:8080), HELM (a helm binary; default: helm on PATH).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, config

RELEASE = os.environ.get("KIND_RELEASE", "platform")
NAMESPACE = os.environ.get("KIND_NAMESPACE", "platform")
BASE_URL = os.environ.get("E2E_BASE_URL", "http://127.0.0.1:8080").rstrip("/")
GATEWAY = f"{RELEASE}-gateway"
MOCK = f"{RELEASE}-downstream-mock"

# The rollout test: a few clients, for at least MIN_LOAD_SECONDS and until the rollout
# has finished (old pods gone), never longer than MAX_ROLLOUT_SECONDS.
CLIENTS = 4
MIN_LOAD_SECONDS = 20.0
MAX_ROLLOUT_SECONDS = 240.0
SLOW_REQUEST_SECONDS = 5.0


@pytest.fixture(scope="module")
def api() -> client.ApiClient:
    config.load_kube_config()
    return client.ApiClient()


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture(scope="module")
def chart_deployments() -> dict[str, dict[str, Any]]:
    """The Deployments exactly as helm applied them for this release."""
    helm = os.environ.get("HELM") or shutil.which("helm")
    assert helm, "no helm binary: set HELM"
    manifest = subprocess.run(
        [helm, "get", "manifest", RELEASE, "--namespace", NAMESPACE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d and d.get("kind") == "Deployment"]
    deployments = {d["metadata"]["name"]: d for d in docs}
    assert set(deployments) == {GATEWAY, MOCK}, sorted(deployments)
    return deployments


def selector_of(deployment: client.V1Deployment) -> str:
    labels = deployment.spec.selector.match_labels
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def live_pods(core: client.CoreV1Api, apps: client.AppsV1Api, name: str) -> list[client.V1Pod]:
    """The Deployment's pods that are not being deleted."""
    deployment = apps.read_namespaced_deployment(name, NAMESPACE)
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=selector_of(deployment)).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def is_ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


@pytest.mark.parametrize("name", [GATEWAY, MOCK])
def test_every_pod_of_the_release_is_ready(
    core: client.CoreV1Api, apps: client.AppsV1Api, name: str
) -> None:
    deployment = apps.read_namespaced_deployment(name, NAMESPACE)
    pods = live_pods(core, apps, name)
    assert len(pods) == deployment.spec.replicas, [p.metadata.name for p in pods]
    for pod in pods:
        assert pod.status.phase == "Running", (pod.metadata.name, pod.status.phase)
        assert is_ready(pod), (pod.metadata.name, pod.status.conditions)
        for status in pod.status.container_statuses:
            assert status.ready, (pod.metadata.name, status)
            assert status.restart_count == 0, (pod.metadata.name, status.last_state)


def is_subset(declared: Any, live: Any) -> bool:
    """Everything the chart declared is in the live object (the API server adds
    defaults, such as `scheme: HTTP` and `successThreshold: 1`, but changes nothing)."""
    if isinstance(declared, dict):
        return isinstance(live, dict) and all(
            key in live and is_subset(value, live[key]) for key, value in declared.items()
        )
    if isinstance(declared, list):
        return (
            isinstance(live, list)
            and len(declared) == len(live)
            and all(is_subset(d, v) for d, v in zip(declared, live, strict=True))
        )
    return bool(declared == live)


@pytest.mark.parametrize("name", [GATEWAY, MOCK])
def test_running_pods_probe_as_the_chart_declares(
    api: client.ApiClient,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    chart_deployments: dict[str, dict[str, Any]],
    name: str,
) -> None:
    declared_pod = chart_deployments[name]["spec"]["template"]["spec"]
    (declared,) = declared_pod["containers"]
    pods = live_pods(core, apps, name)
    assert pods
    for pod in pods:
        live_pod = api.sanitize_for_serialization(pod.spec)
        (live,) = live_pod["containers"]
        for key in ("startupProbe", "livenessProbe", "readinessProbe", "lifecycle", "ports"):
            assert key in declared, f"the chart declares no {key} for {name}"
            assert is_subset(declared[key], live.get(key)), (pod.metadata.name, key, live.get(key))
        assert (
            live_pod["terminationGracePeriodSeconds"]
            == declared_pod["terminationGracePeriodSeconds"]
        )
        # And they are the right probes: health endpoints on the port the app serves.
        ports = {p["name"]: p["containerPort"] for p in live["ports"]}
        assert live["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert live["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert ports[live[probe]["httpGet"]["port"]] == 8080


def run_probe_pod(core: client.CoreV1Api, apps: client.AppsV1Api, script: str) -> str:
    """Run `script` with the gateway image's python in a pod that is not the gateway
    (so NetworkPolicies treat it as a stranger); its log."""
    gateway = apps.read_namespaced_deployment(GATEWAY, NAMESPACE).spec.template.spec
    image = gateway.containers[0].image
    name = f"np-probe-{uuid.uuid4().hex[:8]}"
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/name": "np-probe"}),
        spec=client.V1PodSpec(
            restart_policy="Never",
            automount_service_account_token=False,
            security_context=gateway.security_context,
            containers=[
                client.V1Container(
                    name="probe",
                    image=image,
                    image_pull_policy=gateway.containers[0].image_pull_policy,
                    command=["python3", "-c", script],
                    security_context=gateway.containers[0].security_context,
                )
            ],
        ),
    )
    core.create_namespaced_pod(NAMESPACE, pod)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            phase = core.read_namespaced_pod(name, NAMESPACE).status.phase
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        log: str = core.read_namespaced_pod_log(name, NAMESPACE)
        assert phase == "Succeeded", f"probe pod {phase}: {log}"
        return log
    finally:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)


NETWORK_PROBE = """
import socket
for label, host, port in [("gateway", "{gateway}", 80), ("mock", "{mock}", 80)]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        print(label, "reached", flush=True)
    except OSError as exc:
        print(label, "blocked", type(exc).__name__, flush=True)
"""


@pytest.mark.timeout(150)
def test_only_the_gateway_reaches_the_mock(core: client.CoreV1Api, apps: client.AppsV1Api) -> None:
    """The mock's NetworkPolicy admits the gateway's pods only. The stranger pod reaches
    the gateway (so DNS and the network work for it) but not the mock."""
    log = run_probe_pod(core, apps, NETWORK_PROBE.format(gateway=GATEWAY, mock=MOCK))
    assert "gateway reached" in log, log
    assert "mock blocked" in log, f"the mock answered a pod that is not the gateway: {log}"


@dataclass
class Load:
    """A few clients calling /mock/echo through the gateway until told to stop."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client_loop(self, index: int) -> None:
        # A new connection per request, as a client behind a load balancer would open:
        # a kept-alive connection would stay pinned to one pod through kube-proxy's
        # conntrack entry, and a client that reuses an idle connection the server is
        # closing must retry; that is the client's part of the contract, not the chart's.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=BASE_URL, timeout=10.0, limits=limits) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    response = http.get(f"/mock/echo/rollout/{index}")
                    outcome = (
                        None
                        if response.status_code == 200
                        else f"HTTP {response.status_code}: {response.text[:200]}"
                    )
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                elapsed = time.monotonic() - started
                with self.lock:
                    self.slowest = max(self.slowest, elapsed)
                    if outcome is None:
                        self.ok += 1
                    else:
                        self.failures.append(f"client {index} after {elapsed:.2f}s: {outcome}")


@contextmanager
def running_load() -> Iterator[Load]:
    load = Load()
    threads = [
        threading.Thread(target=load.client_loop, args=(i,), daemon=True) for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=15)


def rollout_finished(core: client.CoreV1Api, apps: client.AppsV1Api, old_pods: set[str]) -> bool:
    deployment = apps.read_namespaced_deployment(GATEWAY, NAMESPACE)
    status, wanted = deployment.status, deployment.spec.replicas
    if (status.observed_generation or 0) < deployment.metadata.generation:
        return False
    if (status.updated_replicas, status.ready_replicas, status.available_replicas) != (
        wanted,
        wanted,
        wanted,
    ):
        return False
    # Finished only when the old pods are gone: their drain is what is under test.
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=selector_of(deployment)).items
    return not old_pods & {p.metadata.name for p in pods}


@pytest.mark.timeout(MAX_ROLLOUT_SECONDS + 60)
def test_a_rollout_restart_under_load_drops_no_request(
    core: client.CoreV1Api, apps: client.AppsV1Api
) -> None:
    old_pods = {p.metadata.name for p in live_pods(core, apps, GATEWAY)}
    assert len(old_pods) >= 2, f"a zero-downtime rollout needs two gateway pods: {old_pods}"
    started = time.monotonic()
    with running_load() as load:
        time.sleep(2)
        assert load.ok > 0, f"no request succeeded before the restart: {load.failures[:5]}"
        # What `kubectl rollout restart` does: a new pod template annotation.
        now = dt.datetime.now(dt.UTC).isoformat()
        patch = {
            "spec": {
                "template": {
                    "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}
                }
            }
        }
        apps.patch_namespaced_deployment(GATEWAY, NAMESPACE, patch)
        deadline = started + MAX_ROLLOUT_SECONDS
        while not rollout_finished(core, apps, old_pods):
            assert time.monotonic() < deadline, "the rollout did not finish in time"
            time.sleep(1)
        rolled = time.monotonic()
        time.sleep(max(2.0, MIN_LOAD_SECONDS - (rolled - started)))
    duration = time.monotonic() - started
    new_pods = {p.metadata.name for p in live_pods(core, apps, GATEWAY)}
    assert not new_pods & old_pods, (old_pods, new_pods)
    print(
        f"rollout took {rolled - started:.1f}s; {load.ok} requests in {duration:.1f}s, "
        f"{len(load.failures)} failed, slowest {load.slowest:.2f}s"
    )
    assert not load.failures, f"{len(load.failures)} failed requests: {load.failures[:10]}"
    assert load.ok >= CLIENTS * 20, f"only {load.ok} requests: the load did not run"
    assert load.slowest < SLOW_REQUEST_SECONDS, f"a request took {load.slowest:.2f}s"
    for pod in live_pods(core, apps, GATEWAY):
        assert is_ready(pod), pod.metadata.name
