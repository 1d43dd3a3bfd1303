"""NetworkPolicies: on by default, only the gateway reaches the mock, and the closed port
stays reachable so that the `unreachable` route is refused (502) instead of dropped (504)."""

from __future__ import annotations

from typing import Any

from .conftest import Manifests, Renderer

GATEWAY = {
    "app.kubernetes.io/name": "platform",
    "app.kubernetes.io/instance": "platform",
    "app.kubernetes.io/component": "gateway",
}
MOCK = {**GATEWAY, "app.kubernetes.io/component": "downstream-mock"}
TCP_8080 = {"protocol": "TCP", "port": 8080}
TCP_9 = {"protocol": "TCP", "port": 9}
PROMETHEUS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def policy(manifests: Manifests, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = manifests.get("NetworkPolicy", name)["spec"]
    return spec


def test_on_by_default_for_both_components(default: Manifests) -> None:
    names = sorted(d["metadata"]["name"] for d in default.of_kind("NetworkPolicy"))
    assert names == ["platform-downstream-mock", "platform-gateway"]
    assert policy(default, "platform-gateway")["podSelector"] == {"matchLabels": GATEWAY}
    assert policy(default, "platform-downstream-mock")["podSelector"] == {"matchLabels": MOCK}


def test_only_the_gateway_reaches_the_mock(default: Manifests) -> None:
    spec = policy(default, "platform-downstream-mock")
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": GATEWAY}}], "ports": [TCP_8080, TCP_9]}
    ]


def test_the_gateway_is_open_on_8080_by_default(default: Manifests) -> None:
    spec = policy(default, "platform-gateway")
    assert spec["policyTypes"] == ["Ingress"], "egress is open by default"
    # A rule without `from` admits every source, on that port only.
    assert spec["ingress"] == [{"ports": [TCP_8080]}]


def test_the_closed_port_is_what_the_unreachable_route_uses(default: Manifests) -> None:
    """Route, Service and policy agree on the port: allowed through, so refused at once."""
    service_ports = default.get("Service", "platform-downstream-mock")["spec"]["ports"]
    closed = next(p for p in service_ports if p["name"] == "closed")
    routes = default.get("ConfigMap", "platform-gateway-routes")["data"]["routes.yaml"]
    assert f"http://platform-downstream-mock:{closed['port']}" in routes
    allowed = policy(default, "platform-downstream-mock")["ingress"][0]["ports"]
    assert {"protocol": "TCP", "port": closed["targetPort"]} in allowed


def test_without_a_closed_port_nothing_mentions_it(render: Renderer) -> None:
    manifests = render(
        downstreamMock__service__closedPort=None,
        networkPolicy__egress__restrict=True,
    )
    ports = manifests.get("Service", "platform-downstream-mock")["spec"]["ports"]
    assert [p["name"] for p in ports] == ["http"]
    assert policy(manifests, "platform-downstream-mock")["ingress"][0]["ports"] == [TCP_8080]
    to_mock = policy(manifests, "platform-gateway")["egress"][1]
    assert to_mock["ports"] == [TCP_8080]


def test_restricted_gateway_ingress(all_features: Manifests) -> None:
    ingress = policy(all_features, "demo-gateway")["ingress"]
    nginx = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    assert ingress[0] == {"ports": [TCP_8080], "from": [nginx]}
    # The chart's helm test pod still gets in, by its labels in this release.
    test_pod = all_features.get("Pod", "demo-test-gateway")["metadata"]["labels"]
    selector = ingress[1]["from"][0]["podSelector"]["matchLabels"]
    assert selector.items() <= test_pod.items()
    assert ingress[1]["ports"] == [TCP_8080]
    # And Prometheus.
    assert ingress[2] == {"ports": [TCP_8080], "from": PROMETHEUS}
    assert len(ingress) == 3


def test_metrics_peers_may_scrape_the_mock(all_features: Manifests) -> None:
    ingress = policy(all_features, "demo-downstream-mock")["ingress"]
    assert ingress[1] == {"ports": [TCP_8080], "from": PROMETHEUS}
    assert len(ingress) == 2


def test_restricted_egress(all_features: Manifests) -> None:
    dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    dns_ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    mock_selector = {**MOCK, "app.kubernetes.io/instance": "platform"}
    gateway = policy(all_features, "demo-gateway")
    assert gateway["policyTypes"] == ["Ingress", "Egress"]
    egress = gateway["egress"]
    assert egress[0] == {"to": [dns], "ports": dns_ports}
    assert egress[1] == {
        "to": [{"podSelector": {"matchLabels": mock_selector}}],
        "ports": [TCP_8080, TCP_9],
    }
    extra_ports = [rule["ports"][0]["port"] for rule in egress[2:]]
    assert extra_ports == [4318, 80]

    mock = policy(all_features, "demo-downstream-mock")
    assert mock["policyTypes"] == ["Ingress", "Egress"]
    assert mock["egress"][0] == {"to": [dns], "ports": dns_ports}
    assert [rule["ports"][0]["port"] for rule in mock["egress"][1:]] == [4318, 80]


def test_off_means_no_policies(render: Renderer) -> None:
    assert not render(networkPolicy__enabled=False).of_kind("NetworkPolicy")


def test_without_the_mock_only_the_gateway_policy(render: Renderer) -> None:
    manifests = render(
        downstreamMock__enabled=False,
        networkPolicy__egress__restrict=True,
        gateway__routes=[{"name": "a", "prefix": "/a", "upstream": "http://a"}],
    )
    policies = manifests.of_kind("NetworkPolicy")
    assert [p["metadata"]["name"] for p in policies] == ["platform-gateway"]
    egress = policies[0]["spec"]["egress"]
    assert len(egress) == 1, "only DNS: there is no mock to reach"
