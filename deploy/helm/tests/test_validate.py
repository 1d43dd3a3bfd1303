"""The manifests against the Kubernetes schemas (kubernetes-validate, offline, strict).

`make chart-validate` runs the same script; these tests also show that strict
validation bites, so a green run means something.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import kubernetes_validate
import pytest

from .conftest import ROOT, Manifests, container

SCRIPT = ROOT / "deploy" / "helm" / "scripts" / "validate_manifests.py"


@pytest.fixture(scope="module")
def validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_manifests", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_manifests"] = module
    spec.loader.exec_module(module)
    return module


def test_every_render_validates(validator: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    from .conftest import helm_binary

    assert validator.main(["--helm", helm_binary()]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out
    # The custom resources are skipped by name, never silently.
    assert "SKIP all-features @ 1.32.0: ServiceMonitor/demo-gateway" in out


@pytest.mark.parametrize("version", ["1.27.0", "1.32.0"])
def test_the_schemas_are_shipped_for_the_pinned_versions(
    validator: ModuleType, version: str
) -> None:
    assert version in validator.KUBERNETES_VERSIONS
    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert (package / f"v{version}-local-strict" / "deployment-apps-v1.json").is_file()


def test_strict_validation_refuses_a_misspelt_field(default: Manifests) -> None:
    deployment = copy.deepcopy(default.get("Deployment", "platform-gateway"))
    kubernetes_validate.validate(deployment, "1.32.0", strict=True)
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, "1.32.0", strict=True)


def test_the_sleep_prestop_action_would_not_be_valid_on_the_floor(default: Manifests) -> None:
    """Why preStop execs python: `lifecycle.preStop.sleep` does not exist in 1.27."""
    deployment = copy.deepcopy(default.get("Deployment", "platform-gateway"))
    container(deployment)["lifecycle"] = {"preStop": {"sleep": {"seconds": 10}}}
    kubernetes_validate.validate(deployment, "1.32.0", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="sleep"):
        kubernetes_validate.validate(deployment, "1.27.0", strict=True)
