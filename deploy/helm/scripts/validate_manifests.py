"""Validate the chart's rendered manifests against the Kubernetes JSON schemas.

    python deploy/helm/scripts/validate_manifests.py [--helm PATH]

Renders the chart with its default values, with every feature on
(deploy/helm/ci/all-features-values.yaml) and with the kind values, and validates each
object strictly (unknown fields are errors) against the OpenAPI-derived schemas that
the kubernetes-validate package ships, offline, for two pinned Kubernetes versions:
the chart's floor (kubeVersion >=1.27) and the version of the kind e2e cluster.

Custom resources are not in those schemas: the ServiceMonitor (monitoring.coreos.com/v1)
is skipped, by name, and reported as skipped; any other kind without a schema fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.version import __version__ as KUBERNETES_VALIDATE_VERSION

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "platform"
# The chart's floor and the kind e2e cluster (kind v0.27.0: Kubernetes 1.32).
KUBERNETES_VERSIONS = ("1.27.0", "1.32.0")
RENDERS: dict[str, list[Path]] = {
    "default": [],
    "all-features": [ROOT / "deploy" / "helm" / "ci" / "all-features-values.yaml"],
    "kind": [ROOT / "deploy" / "kind" / "values.yaml"],
}
NO_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def find_helm(explicit: str | None) -> str:
    for candidate in (explicit, os.environ.get("HELM"), shutil.which("helm")):
        if candidate:
            return candidate
    local = ROOT / ".tools" / "bin" / "helm"
    if local.exists():
        return str(local)
    sys.exit("validate_manifests: no helm; set HELM or run `make helm`")


def render(helm: str, values: list[Path], kube_version: str) -> list[dict[str, Any]]:
    args = [helm, "template", "platform", str(CHART), "--kube-version", kube_version]
    for path in values:
        args += ["--values", str(path)]
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBE"))}
        env |= {
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
            "KUBECONFIG": f"{home}/none",
        }
        # The helm binary the user chose and fixed arguments: nothing from outside.
        result = subprocess.run(args, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    if result.returncode != 0:
        sys.exit(f"validate_manifests: helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--helm", help="helm binary (default: $HELM, PATH, .tools/bin/helm)")
    args = parser.parse_args(argv)
    helm = find_helm(args.helm)
    print(
        f"kubernetes-validate {KUBERNETES_VALIDATE_VERSION}, strict, Kubernetes "
        + " and ".join(KUBERNETES_VERSIONS)
    )
    failures = checked = 0
    for name, values in RENDERS.items():
        for version in KUBERNETES_VERSIONS:
            docs = render(helm, values, version)
            for doc in docs:
                what = f"{name} @ {version}: {doc['kind']}/{doc['metadata']['name']}"
                if (doc["apiVersion"], doc["kind"]) in NO_SCHEMA:
                    print(f"SKIP {what} (custom resource: no schema in kubernetes-validate)")
                    continue
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path)
                    print(f"FAIL {what}: {path}: {exc.message}")
                    failures += 1
                except kubernetes_validate.SchemaNotFoundError as exc:
                    print(f"FAIL {what}: {exc.message}")
                    failures += 1
                else:
                    checked += 1
    print(f"{checked} passed, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
