"""What users add to the pods: extraEnv, annotations, labels, pull secrets, Redis wiring."""

from __future__ import annotations

import pytest

from .conftest import Manifests, Renderer, env_of, env_value, pod_spec, workloads


def test_extra_env_is_appended_after_the_charts_own(all_features: Manifests) -> None:
    gateway = env_of(all_features.get("Deployment", "demo-gateway"))
    assert gateway["GATEWAY_UPSTREAM_MAX_CONNECTIONS"] == {
        "name": "GATEWAY_UPSTREAM_MAX_CONNECTIONS",
        "value": "2000",
    }
    assert list(gateway)[-1] == "GATEWAY_UPSTREAM_MAX_CONNECTIONS"
    mock = env_of(all_features.get("Deployment", "demo-downstream-mock"))
    assert mock["MOCK_MAX_DELAY_SECONDS"]["value"] == "10"
    assert "MOCK_MAX_DELAY_SECONDS" not in gateway


def test_extra_env_may_use_value_from(render: Renderer) -> None:
    entry = {
        "name": "GATEWAY_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "token"}},
    }
    manifests = render(gateway__extraEnv=[entry])
    assert env_of(manifests.get("Deployment", "platform-gateway"))["GATEWAY_TOKEN"] == entry


def test_pod_annotations_and_labels(all_features: Manifests) -> None:
    gateway = all_features.get("Deployment", "demo-gateway")["spec"]["template"]["metadata"]
    assert gateway["annotations"]["example.com/scrape"] == "true"
    assert "checksum/routes" in gateway["annotations"]
    assert gateway["labels"]["tier"] == "edge"
    mock = all_features.get("Deployment", "demo-downstream-mock")["spec"]["template"]["metadata"]
    assert mock["annotations"] == {"example.com/owner": "platform"}
    assert mock["labels"]["tier"] == "backend"
    # Pod labels never leak into the selector, which is immutable.
    selector = all_features.get("Deployment", "demo-gateway")["spec"]["selector"]["matchLabels"]
    assert "tier" not in selector


def test_no_annotations_on_mock_pods_by_default(default: Manifests) -> None:
    metadata = default.get("Deployment", "platform-downstream-mock")["spec"]["template"]["metadata"]
    assert "annotations" not in metadata


def test_image_pull_secrets_on_every_pod(all_features: Manifests, default: Manifests) -> None:
    for doc in workloads(all_features):
        assert pod_spec(doc)["imagePullSecrets"] == [{"name": "ghcr-pull"}], doc["metadata"]["name"]
    for doc in workloads(default):
        assert "imagePullSecrets" not in pod_spec(doc)


def test_no_redis_by_default(default: Manifests) -> None:
    assert "GATEWAY_REDIS_URL" not in env_of(default.get("Deployment", "platform-gateway"))


def test_redis_url(render: Renderer) -> None:
    manifests = render(redis__url="redis://redis.cache:6379/0")
    gateway = manifests.get("Deployment", "platform-gateway")
    assert env_value(gateway, "GATEWAY_REDIS_URL") == "redis://redis.cache:6379/0"
    assert "GATEWAY_REDIS_URL" not in env_of(
        manifests.get("Deployment", "platform-downstream-mock")
    )


def test_redis_url_from_an_existing_secret(all_features: Manifests) -> None:
    entry = env_of(all_features.get("Deployment", "demo-gateway"))["GATEWAY_REDIS_URL"]
    assert entry["valueFrom"] == {"secretKeyRef": {"name": "platform-redis", "key": "url"}}
    assert "value" not in entry


def test_redis_url_and_secret_together_are_refused(render: Renderer) -> None:
    error = render.error(redis={"url": "redis://x", "existingSecret": "s"})
    assert "redis.url and redis.existingSecret are both set" in error


@pytest.mark.parametrize("kind", ["Deployment", "Pod"])
def test_no_secret_material_is_rendered(all_features: Manifests, kind: str) -> None:
    assert not all_features.of_kind("Secret")
    for doc in all_features.of_kind(kind):
        for entry in env_of(doc).values():
            assert "password" not in str(entry.get("value", "")).lower()
