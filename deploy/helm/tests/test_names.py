"""Names, labels and Services: what DESIGN.md promises users and what other tools select on."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import CHART, HelmError, Manifests, Renderer, _run, container, pod_spec

COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"


def test_release_platform_gives_the_service_names_of_the_design(default: Manifests) -> None:
    assert default.get("Service", "platform-gateway")
    assert default.get("Service", "platform-downstream-mock")
    assert default.get("Deployment", "platform-gateway")
    assert default.get("Deployment", "platform-downstream-mock")


def test_the_release_name_is_the_prefix_for_any_release(render: Renderer) -> None:
    manifests = render(release="edge")
    services = sorted(d["metadata"]["name"] for d in manifests.of_kind("Service"))
    assert services == ["edge-downstream-mock", "edge-gateway"]


def test_fullname_override_replaces_the_release_name(all_features: Manifests) -> None:
    assert all_features.get("Service", "demo-gateway")
    # All but the ServiceAccount, whose name all-features sets explicitly.
    names = [d["metadata"]["name"] for d in all_features if d["kind"] != "ServiceAccount"]
    assert all(name.startswith("demo-") for name in names), names


def test_a_prefix_too_long_for_dns_labels_is_refused(render: Renderer) -> None:
    error = render.error(fullnameOverride="x" * 48)
    assert "longer than 47 characters" in error


def test_services_forward_port_80_to_the_named_container_port(default: Manifests) -> None:
    for name in ("platform-gateway", "platform-downstream-mock"):
        service = default.get("Service", name)
        http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
        assert (http["port"], http["targetPort"]) == (80, "http")
        assert service["spec"]["type"] == "ClusterIP"
    for deployment in default.of_kind("Deployment"):
        ports = container(deployment)["ports"]
        assert ports == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_each_service_selects_exactly_its_own_pods(default: Manifests) -> None:
    for component in ("gateway", "downstream-mock"):
        service = default.get("Service", f"platform-{component}")
        deployment = default.get("Deployment", f"platform-{component}")
        selector = service["spec"]["selector"]
        assert selector[COMPONENT] == component
        assert selector[INSTANCE] == "platform"
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"] == selector


def test_every_object_carries_the_release_labels(all_features: Manifests) -> None:
    for doc in all_features:
        labels = doc["metadata"]["labels"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels[INSTANCE] == "platform", where
        assert labels["app.kubernetes.io/name"] == "platform", where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["team"] == "platform", f"{where}: commonLabels missing"


def test_every_object_is_namespaced_to_the_release(default: Manifests) -> None:
    for doc in default:
        assert doc["metadata"]["namespace"] == "apps", doc["metadata"]


def test_nodeport_service_for_kind(render: Renderer) -> None:
    manifests = render(gateway__service={"type": "NodePort", "nodePort": 30080})
    port = manifests.get("Service", "platform-gateway")["spec"]["ports"][0]
    assert manifests.get("Service", "platform-gateway")["spec"]["type"] == "NodePort"
    assert port["nodePort"] == 30080


def test_a_node_port_is_not_rendered_on_a_clusterip_service(render: Renderer) -> None:
    manifests = render(gateway__service__nodePort=30080)
    assert "nodePort" not in manifests.get("Service", "platform-gateway")["spec"]["ports"][0]


@pytest.mark.parametrize(("version", "renders"), [("1.26.9", False), ("1.27.0", True)])
def test_kube_version_floor(helm_home: Path, version: str, renders: bool) -> None:
    args = ("template", "x", str(CHART), "--kube-version", version)
    if renders:
        assert "kind: Deployment" in _run(args, helm_home)
    else:
        with pytest.raises(HelmError, match="kubeVersion"):
            _run(args, helm_home)


def test_service_account_is_shared_and_never_mounted(all_features: Manifests) -> None:
    account = all_features.get("ServiceAccount", "platform-runtime")
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"] == {"example.com/role": "platform"}
    for doc in all_features.of_kind("Deployment") + all_features.of_kind("Pod"):
        assert pod_spec(doc)["serviceAccountName"] == "platform-runtime"


def test_no_service_account_when_not_created(render: Renderer) -> None:
    manifests = render(serviceAccount__create=False)
    assert not manifests.of_kind("ServiceAccount")
    for doc in manifests.of_kind("Deployment"):
        assert pod_spec(doc)["serviceAccountName"] == "default"
