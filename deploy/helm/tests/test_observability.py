"""ServiceMonitors, Grafana dashboard ConfigMaps and OpenTelemetry settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import CHART, Doc, Manifests, Renderer, env_of, env_value

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))


def test_no_servicemonitor_by_default(default: Manifests) -> None:
    assert not default.of_kind("ServiceMonitor")


def test_one_servicemonitor_per_component(all_features: Manifests) -> None:
    monitors = {m["metadata"]["name"]: m for m in all_features.of_kind("ServiceMonitor")}
    assert sorted(monitors) == ["demo-downstream-mock", "demo-gateway"]
    for component in ("gateway", "downstream-mock"):
        monitor = monitors[f"demo-{component}"]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        service = all_features.get("Service", f"demo-{component}")
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        assert selector["app.kubernetes.io/component"] == component
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}
        assert monitor["spec"]["endpoints"] == [
            {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
        ]
        # The endpoint's port name exists on the Service.
        assert "http" in [p["name"] for p in service["spec"]["ports"]]


def test_servicemonitor_namespace(render: Renderer) -> None:
    manifests = render(serviceMonitor={"enabled": True, "namespace": "monitoring"})
    for monitor in manifests.of_kind("ServiceMonitor"):
        assert monitor["metadata"]["namespace"] == "monitoring"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}


def test_no_dashboards_by_default(default: Manifests) -> None:
    assert not [c for c in default.of_kind("ConfigMap") if "dashboard" in c["metadata"]["name"]]


def dashboard_maps(manifests: Manifests) -> dict[str, Doc]:
    return {
        c["metadata"]["name"]: c
        for c in manifests.of_kind("ConfigMap")
        if "-dashboard-" in c["metadata"]["name"]
    }


def test_the_chart_ships_dashboards() -> None:
    assert DASHBOARDS, "deploy/helm/platform/dashboards/*.json is empty"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_becomes_a_labelled_configmap(all_features: Manifests, path: Path) -> None:
    maps = dashboard_maps(all_features)
    config_map = maps[f"demo-dashboard-{path.stem}"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "platform"}
    data = config_map["data"]
    assert list(data) == [path.name]
    # Byte for byte the file, so Grafana loads what was reviewed.
    assert data[path.name] == path.read_text().rstrip("\n")
    assert json.loads(data[path.name]) == json.loads(path.read_text())


def test_one_configmap_per_file_and_the_label_is_configurable(
    render: Renderer, tmp_path: Path
) -> None:
    chart = tmp_path / "platform"
    shutil.copytree(CHART, chart)
    (chart / "dashboards" / "Extra_Board.json").write_text('{"title": "extra"}\n')
    (chart / "dashboards" / "notes.txt").write_text("not a dashboard\n")
    manifests = render(
        chart=chart, dashboards={"enabled": True, "label": "dash", "labelValue": "yes"}
    )
    maps = dashboard_maps(manifests)
    expected = {f"platform-dashboard-{p.stem}" for p in DASHBOARDS} | {
        "platform-dashboard-extra-board"
    }
    assert set(maps) == expected
    extra = maps["platform-dashboard-extra-board"]
    assert extra["metadata"]["labels"]["dash"] == "yes"
    assert "grafana_dashboard" not in extra["metadata"]["labels"]
    assert json.loads(extra["data"]["Extra_Board.json"]) == {"title": "extra"}


@pytest.mark.parametrize(
    ("name", "service"),
    [("platform-gateway", "gateway"), ("platform-downstream-mock", "downstream-mock")],
)
def test_tracing_off_by_default(default: Manifests, name: str, service: str) -> None:
    deployment = default.get("Deployment", name)
    assert env_value(deployment, "OTEL_TRACES_EXPORTER") == "none"
    assert env_value(deployment, "OTEL_SERVICE_NAME") == service
    env = env_of(deployment)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert "OTEL_RESOURCE_ATTRIBUTES" not in env


@pytest.mark.parametrize(
    ("name", "service"), [("demo-gateway", "gateway"), ("demo-downstream-mock", "downstream-mock")]
)
def test_tracing_on(all_features: Manifests, name: str, service: str) -> None:
    deployment = all_features.get("Deployment", name)
    env = env_of(deployment)
    assert env_value(deployment, "OTEL_TRACES_EXPORTER") == "otlp"
    assert env_value(deployment, "OTEL_SERVICE_NAME") == service
    assert (
        env_value(deployment, "OTEL_EXPORTER_OTLP_ENDPOINT")
        == "http://otel-collector.observability:4318"
    )
    assert env_value(deployment, "OTEL_EXPORTER_OTLP_PROTOCOL") == "http/protobuf"
    assert env_value(deployment, "OTEL_TRACES_SAMPLER") == "parentbased_traceidratio"
    assert env_value(deployment, "OTEL_TRACES_SAMPLER_ARG") == "0.25"
    # The downward API fills in what only the kubelet knows.
    assert env["K8S_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["K8S_NAMESPACE_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert env["K8S_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    attributes = dict(
        item.split("=", 1) for item in env_value(deployment, "OTEL_RESOURCE_ATTRIBUTES").split(",")
    )
    assert attributes == {
        "k8s.namespace.name": "$(K8S_NAMESPACE_NAME)",
        "k8s.pod.name": "$(K8S_POD_NAME)",
        "k8s.node.name": "$(K8S_NODE_NAME)",
        "k8s.deployment.name": name,
        "service.version": "0.1.0-rc.1" if service == "downstream-mock" else "0.1.0",
        "deployment.environment.name": "staging",
        "service.namespace": "platform",
    }
    # $(VAR) references expand only from variables defined earlier in the list.
    names = list(env)
    assert names.index("OTEL_RESOURCE_ATTRIBUTES") > names.index("K8S_POD_NAME")
    assert names.index("OTEL_RESOURCE_ATTRIBUTES") > names.index("K8S_NAMESPACE_NAME")


def test_tracing_on_needs_an_endpoint(render: Renderer) -> None:
    assert "otel.endpoint is required" in render.error(otel__enabled=True)
