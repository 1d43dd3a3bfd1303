"""Secure defaults on every pod the chart makes, the helm test pod included."""

from __future__ import annotations

import pytest

from .conftest import Doc, Manifests, Renderer, container, env_value, pod_spec, workloads

WRITABLE = {"/tmp": "tmp", "/tmp/metrics": "metrics", "/app/logs": "logs"}


@pytest.fixture(params=["default", "all_features"])
def manifests(request: pytest.FixtureRequest) -> Manifests:
    result: Manifests = request.getfixturevalue(request.param)
    return result


def _name(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def test_every_pod_runs_as_uid_10001_never_root(manifests: Manifests) -> None:
    docs = workloads(manifests)
    assert len(docs) == 3, [_name(d) for d in docs]
    for doc in docs:
        spec = pod_spec(doc)
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, _name(doc)


def test_every_container_is_locked_down(manifests: Manifests) -> None:
    for doc in workloads(manifests):
        context = container(doc)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, _name(doc)
        assert context["allowPrivilegeEscalation"] is False, _name(doc)
        assert context["privileged"] is False, _name(doc)
        assert context["runAsNonRoot"] is True, _name(doc)
        assert context["capabilities"] == {"drop": ["ALL"]}, _name(doc)
        assert "add" not in context["capabilities"], _name(doc)


def test_no_pod_gets_a_service_account_token(manifests: Manifests) -> None:
    for doc in workloads(manifests):
        assert pod_spec(doc)["automountServiceAccountToken"] is False, _name(doc)


def test_nothing_from_the_host(manifests: Manifests) -> None:
    for doc in workloads(manifests):
        spec = pod_spec(doc)
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{_name(doc)}: {key}"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, f"{_name(doc)}: {volume}"


@pytest.mark.parametrize("name", ["platform-gateway", "platform-downstream-mock"])
def test_only_emptydirs_are_writable(default: Manifests, name: str) -> None:
    deployment = default.get("Deployment", name)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
    for path, volume_name in WRITABLE.items():
        assert mounts[path]["name"] == volume_name
        assert not mounts[path].get("readOnly")
        assert "sizeLimit" in volumes[volume_name]["emptyDir"], volumes[volume_name]
    others = [m for p, m in mounts.items() if p not in WRITABLE]
    assert all(m.get("readOnly") for m in others), others


@pytest.mark.parametrize("name", ["platform-gateway", "platform-downstream-mock"])
def test_the_metrics_directory_is_its_own_emptydir(default: Manifests, name: str) -> None:
    """PROMETHEUS_MULTIPROC_DIR must be a writable directory that exists: the gunicorn
    master creates and empties it (servicekit.metrics.prepare_multiprocess_dir)."""
    deployment = default.get("Deployment", name)
    assert env_value(deployment, "PROMETHEUS_MULTIPROC_DIR") == "/tmp/metrics"


def test_metrics_emptydir_can_be_memory_backed(all_features: Manifests) -> None:
    volumes = {
        v["name"]: v for v in pod_spec(all_features.get("Deployment", "demo-gateway"))["volumes"]
    }
    assert volumes["metrics"]["emptyDir"]["medium"] == "Memory"
    assert volumes["tmp"]["emptyDir"].get("medium") is None


def test_the_log_file_goes_to_the_logs_emptydir(all_features: Manifests) -> None:
    for name, variable in (
        ("demo-gateway", "GATEWAY_LOG_FILE"),
        ("demo-downstream-mock", "MOCK_LOG_FILE"),
    ):
        path = env_value(all_features.get("Deployment", name), variable)
        assert path == "/app/logs/api.log"


def test_no_log_file_by_default(default: Manifests) -> None:
    assert env_value(default.get("Deployment", "platform-gateway"), "GATEWAY_LOG_FILE") is None


def test_the_security_context_can_be_relaxed_only_explicitly(render: Renderer) -> None:
    manifests = render(containerSecurityContext={"readOnlyRootFilesystem": False})
    context = container(manifests.get("Deployment", "platform-gateway"))["securityContext"]
    # --set-json merges maps: the rest of the secure defaults stays.
    assert context["readOnlyRootFilesystem"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
