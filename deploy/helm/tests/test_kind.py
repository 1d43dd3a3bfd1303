"""The kind setup agrees with itself: NodePort, port mapping, images, e2e address."""

from __future__ import annotations

from typing import Any

import yaml

from .conftest import KIND_VALUES, ROOT, Renderer, container

KIND_CONFIG = ROOT / "deploy" / "kind" / "kind-config.yaml"
E2E_DEFAULT = "http://127.0.0.1:8080"


def kind_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(KIND_CONFIG.read_text())
    return config


def test_the_gateway_nodeport_is_published_where_e2e_looks(render: Renderer) -> None:
    manifests = render(KIND_VALUES)
    service = manifests.get("Service", "platform-gateway")
    assert service["spec"]["type"] == "NodePort"
    node_port = service["spec"]["ports"][0]["nodePort"]
    (node,) = kind_config()["nodes"]
    mappings = [m for m in node["extraPortMappings"] if m["containerPort"] == node_port]
    assert len(mappings) == 1, node["extraPortMappings"]
    mapping = mappings[0]
    assert f"http://{mapping['listenAddress']}:{mapping['hostPort']}" == E2E_DEFAULT
    assert mapping["protocol"] == "TCP"


def test_kind_uses_the_loaded_images_and_never_pulls(render: Renderer) -> None:
    manifests = render(KIND_VALUES)
    images = {
        d["metadata"]["name"]: container(d)
        for d in manifests.of_kind("Deployment") + manifests.of_kind("Pod")
    }
    assert images["platform-gateway"]["image"] == "platform/gateway:kind"
    assert images["platform-downstream-mock"]["image"] == "platform/downstream-mock:kind"
    assert images["platform-test-gateway"]["image"] == "platform/gateway:kind"
    assert {c["imagePullPolicy"] for c in images.values()} == {"Never"}


def test_kind_script_builds_the_images_the_values_name() -> None:
    script = (ROOT / "scripts" / "kind.sh").read_text()
    assert "platform/gateway:${KIND_IMAGE_TAG:-kind}" in script
    assert "platform/downstream-mock:${KIND_IMAGE_TAG:-kind}" in script
    assert "deploy/kind/values.yaml" in script
    assert "deploy/kind/kind-config.yaml" in script
