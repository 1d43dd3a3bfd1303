"""Probes, the preStop wait and the grace period, lined up with gunicorn's drain."""

from __future__ import annotations

import subprocess
import time

import pytest

from .conftest import Doc, Manifests, Renderer, container, env_value, pod_spec

COMPONENTS = [
    ("platform-gateway", "GATEWAY", "gateway"),
    ("platform-downstream-mock", "MOCK", "downstreamMock"),
]


def probe_target(doc: Doc, probe: str) -> tuple[str, int, str]:
    """(path, container port number, scheme) a probe calls, with the named port resolved."""
    c = container(doc)
    get = c[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
    return get["path"], port, get.get("scheme", "HTTP")


@pytest.mark.parametrize(("name", "prefix", "key"), COMPONENTS)
def test_probes_call_the_health_endpoints_on_the_served_port(
    default: Manifests, name: str, prefix: str, key: str
) -> None:
    deployment = default.get("Deployment", name)
    assert probe_target(deployment, "livenessProbe") == ("/livez", 8080, "HTTP")
    assert probe_target(deployment, "readinessProbe") == ("/readyz", 8080, "HTTP")
    assert probe_target(deployment, "startupProbe") == ("/livez", 8080, "HTTP")
    # The port the probes hit is the port the service binds.
    assert env_value(deployment, f"{prefix}_PORT") == "8080"
    assert env_value(deployment, f"{prefix}_HOST") == "0.0.0.0"


@pytest.mark.parametrize(("name", "prefix", "key"), COMPONENTS)
def test_startup_allows_a_minute_and_liveness_is_patient(
    default: Manifests, name: str, prefix: str, key: str
) -> None:
    c = container(default.get("Deployment", name))
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 60
    liveness, readiness = c["livenessProbe"], c["readinessProbe"]
    # Readiness reacts before liveness would restart anything.
    assert (
        readiness["periodSeconds"] * readiness["failureThreshold"]
        < liveness["periodSeconds"] * liveness["failureThreshold"]
    )


def test_probes_can_be_tuned_without_restating_them(render: Renderer) -> None:
    manifests = render(gateway__readinessProbe={"periodSeconds": 1})
    readiness = container(manifests.get("Deployment", "platform-gateway"))["readinessProbe"]
    assert readiness["periodSeconds"] == 1
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}


def prestop_seconds(doc: Doc) -> int:
    command = container(doc)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"], command
    assert command[2].startswith("import time; time.sleep("), command
    return int(command[2].removeprefix("import time; time.sleep(").removesuffix(")"))


@pytest.mark.parametrize(
    "case",
    [
        # name, env prefix, preStop sleep, graceful timeout, grace period
        ("platform-gateway", "GATEWAY", 10, 30, 45),
        ("platform-downstream-mock", "MOCK", 5, 30, 40),
    ],
)
def test_grace_period_covers_prestop_plus_drain_plus_margin(
    default: Manifests, case: tuple[str, str, int, int, int]
) -> None:
    name, prefix, sleep, graceful, grace = case
    deployment = default.get("Deployment", name)
    assert prestop_seconds(deployment) == sleep
    assert env_value(deployment, f"{prefix}_GRACEFUL_TIMEOUT") == str(graceful)
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == grace == sleep + graceful + 5


def test_the_arithmetic_follows_the_values(render: Renderer) -> None:
    manifests = render(gateway__preStopSleepSeconds=3, gateway__gracefulTimeoutSeconds=12)
    deployment = manifests.get("Deployment", "platform-gateway")
    assert prestop_seconds(deployment) == 3
    assert env_value(deployment, "GATEWAY_GRACEFUL_TIMEOUT") == "12"
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == 20


def test_a_longer_grace_period_is_kept(all_features: Manifests) -> None:
    assert (
        pod_spec(all_features.get("Deployment", "demo-gateway"))["terminationGracePeriodSeconds"]
        == 60
    )


@pytest.mark.parametrize("key", ["gateway", "downstreamMock"])
def test_a_grace_period_shorter_than_the_drain_is_refused(render: Renderer, key: str) -> None:
    error = render.error(**{f"{key}__terminationGracePeriodSeconds": 20})
    assert f"{key}.terminationGracePeriodSeconds=20 is shorter than" in error


def test_the_prestop_command_really_waits(render: Renderer) -> None:
    """The hook is exec'd in the image with no shell, relying on python3 alone: run the
    exact command here and time it (`make e2e-chart` runs it in the images)."""
    manifests = render(gateway__preStopSleepSeconds=1)
    command = container(manifests.get("Deployment", "platform-gateway"))["lifecycle"]["preStop"][
        "exec"
    ]["command"]
    started = time.monotonic()
    subprocess.run(command, check=True, timeout=10)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5.0, elapsed


def test_rollouts_never_lower_capacity(default: Manifests) -> None:
    strategy = default.get("Deployment", "platform-gateway")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert default.get("Deployment", "platform-gateway")["spec"]["replicas"] == 2


def test_workers_and_log_level_reach_the_services(render: Renderer) -> None:
    manifests = render(gateway__workers=4, downstreamMock__logLevel="debug")
    assert env_value(manifests.get("Deployment", "platform-gateway"), "GATEWAY_WORKERS") == "4"
    mock = manifests.get("Deployment", "platform-downstream-mock")
    assert env_value(mock, "MOCK_LOG_LEVEL") == "debug"


def test_resources_request_cpu_and_limit_memory_only(default: Manifests) -> None:
    for deployment in default.of_kind("Deployment"):
        resources = container(deployment)["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()
        assert resources["limits"].keys() == {"memory"}
