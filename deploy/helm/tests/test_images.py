"""Images: the tag defaults to the chart's appVersion, a digest pins, `latest` never."""

from __future__ import annotations

import pytest

from .conftest import Manifests, Renderer, container

DIGEST = "sha256:" + "ab" * 32


def test_tags_default_to_the_app_version(default: Manifests, app_version: str) -> None:
    gateway = container(default.get("Deployment", "platform-gateway"))
    mock = container(default.get("Deployment", "platform-downstream-mock"))
    assert gateway["image"] == f"ghcr.io/example/platform/gateway:{app_version}"
    assert mock["image"] == f"ghcr.io/example/platform/downstream-mock:{app_version}"
    assert gateway["imagePullPolicy"] == "IfNotPresent"


def test_no_image_is_latest_or_untagged(all_features: Manifests, default: Manifests) -> None:
    for manifests in (default, all_features):
        for doc in manifests.of_kind("Deployment") + manifests.of_kind("Pod"):
            image = container(doc)["image"]
            assert "@sha256:" in image or image.rsplit("/", 1)[-1].count(":") == 1, image
            assert not image.endswith(":latest"), image


def test_a_tag_overrides_the_app_version(render: Renderer) -> None:
    manifests = render(gateway__image__tag="1.2.3", downstreamMock__image__tag="0.9.0")
    assert container(manifests.get("Deployment", "platform-gateway"))["image"].endswith(":1.2.3")
    mock = container(manifests.get("Deployment", "platform-downstream-mock"))
    assert mock["image"].endswith(":0.9.0")


def test_a_numeric_tag_from_set_is_kept_as_written(render: Renderer) -> None:
    manifests = render(gateway__image__tag=2)
    assert container(manifests.get("Deployment", "platform-gateway"))["image"].endswith(":2")


def test_a_digest_pins_the_image(render: Renderer) -> None:
    manifests = render(gateway__image__digest=DIGEST, gateway__image__tag="ignored")
    image = container(manifests.get("Deployment", "platform-gateway"))["image"]
    assert image == f"ghcr.io/example/platform/gateway@{DIGEST}"
    # The helm test pod runs the very same gateway image.
    test_pod = manifests.get("Pod", "platform-test-gateway")
    assert container(test_pod)["image"] == image


@pytest.mark.parametrize("key", ["gateway", "downstreamMock"])
def test_latest_is_refused(render: Renderer, key: str) -> None:
    error = render.error(**{f"{key}__image__tag": "latest"})
    assert f'{key}.image.tag: "latest" is not allowed' in error


def test_a_malformed_digest_is_refused(render: Renderer) -> None:
    error = render.error(gateway__image__digest="abc123")
    assert "gateway.image.digest must look like sha256:" in error


def test_pull_policy_is_configurable(render: Renderer) -> None:
    manifests = render(downstreamMock__image__pullPolicy="Never")
    mock = container(manifests.get("Deployment", "platform-downstream-mock"))
    assert mock["imagePullPolicy"] == "Never"
