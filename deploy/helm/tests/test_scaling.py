"""HPA, PodDisruptionBudgets and topology spread."""

from __future__ import annotations

from .conftest import Manifests, Renderer, pod_spec

GATEWAY_SELECTOR = {
    "app.kubernetes.io/name": "platform",
    "app.kubernetes.io/instance": "platform",
    "app.kubernetes.io/component": "gateway",
}


def test_no_hpa_by_default_and_fixed_replicas(default: Manifests) -> None:
    assert not default.of_kind("HorizontalPodAutoscaler")
    assert default.get("Deployment", "platform-gateway")["spec"]["replicas"] == 2
    assert default.get("Deployment", "platform-downstream-mock")["spec"]["replicas"] == 1


def test_with_the_hpa_the_deployment_leaves_replicas_to_it(all_features: Manifests) -> None:
    deployment = all_features.get("Deployment", "demo-gateway")
    assert "replicas" not in deployment["spec"]
    hpa = all_features.get("HorizontalPodAutoscaler", "demo-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "demo-gateway",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
    }
    assert targets == {"cpu": 70, "memory": 80}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    # The mock is never autoscaled: its state lives in the pod.
    assert all_features.get("Deployment", "demo-downstream-mock")["spec"]["replicas"] == 1


def test_cpu_only_hpa_when_no_memory_target(render: Renderer) -> None:
    hpa = render(gateway__autoscaling__enabled=True).get(
        "HorizontalPodAutoscaler", "platform-gateway"
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "behavior" not in hpa["spec"]


def test_min_above_max_is_refused(render: Renderer) -> None:
    error = render.error(gateway__autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 3})
    assert "minReplicas is greater than maxReplicas" in error


def test_gateway_pdb_by_default_and_none_for_the_single_mock(default: Manifests) -> None:
    pdbs = default.of_kind("PodDisruptionBudget")
    assert [p["metadata"]["name"] for p in pdbs] == ["platform-gateway"]
    spec = pdbs[0]["spec"]
    assert spec == {"maxUnavailable": 1, "selector": {"matchLabels": GATEWAY_SELECTOR}}


def test_pdb_min_available_replaces_max_unavailable(all_features: Manifests) -> None:
    spec = all_features.get("PodDisruptionBudget", "demo-gateway")["spec"]
    assert spec["minAvailable"] == 1
    assert "maxUnavailable" not in spec
    assert (
        all_features.get("PodDisruptionBudget", "demo-downstream-mock")["spec"]["maxUnavailable"]
        == 1
    )


def test_pdb_accepts_a_percentage(render: Renderer) -> None:
    pdb = render(gateway__pdb__maxUnavailable="50%").get("PodDisruptionBudget", "platform-gateway")
    assert pdb["spec"]["maxUnavailable"] == "50%"


def test_pdb_can_be_switched_off(render: Renderer) -> None:
    assert not render(gateway__pdb__enabled=False).of_kind("PodDisruptionBudget")


def test_no_mock_pdb_when_the_mock_is_off(render: Renderer) -> None:
    manifests = render(
        downstreamMock={"enabled": False, "pdb": {"enabled": True}},
        gateway__routes=[{"name": "a", "prefix": "/a", "upstream": "http://a"}],
    )
    assert [p["metadata"]["name"] for p in manifests.of_kind("PodDisruptionBudget")] == [
        "platform-gateway"
    ]


def test_topology_spread_gets_the_component_selector(default: Manifests) -> None:
    constraints = pod_spec(default.get("Deployment", "platform-gateway"))[
        "topologySpreadConstraints"
    ]
    assert [c["topologyKey"] for c in constraints] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    for constraint in constraints:
        assert constraint["labelSelector"] == {"matchLabels": GATEWAY_SELECTOR}
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    assert "topologySpreadConstraints" not in pod_spec(
        default.get("Deployment", "platform-downstream-mock")
    )


def test_a_given_label_selector_is_kept(render: Renderer) -> None:
    selector = {"matchLabels": {"app": "other"}}
    manifests = render(
        gateway__topologySpreadConstraints=[
            {
                "maxSkew": 2,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": selector,
            }
        ]
    )
    constraints = pod_spec(manifests.get("Deployment", "platform-gateway"))[
        "topologySpreadConstraints"
    ]
    assert constraints == [
        {
            "maxSkew": 2,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": selector,
        }
    ]


def test_scheduling_values_reach_the_pods(all_features: Manifests) -> None:
    spec = pod_spec(all_features.get("Deployment", "demo-gateway"))
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in spec["affinity"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    mock = pod_spec(all_features.get("Deployment", "demo-downstream-mock"))
    assert (
        mock["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"][
            "app.kubernetes.io/component"
        ]
        == "downstream-mock"
    )
