"""Chart unit tests: `helm template` output, parsed.

helm-unittest is a helm plugin fetched from GitHub, which is out of reach where this
project is built; pytest over the rendered YAML tests the same things and needs only the
helm binary: $HELM, else `helm` on PATH, else .tools/bin/helm (`make helm` fetches it).
Nothing here talks to a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "platform"
ALL_FEATURES = ROOT / "deploy" / "helm" / "ci" / "all-features-values.yaml"
KIND_VALUES = ROOT / "deploy" / "kind" / "values.yaml"
RELEASE = "platform"
NAMESPACE = "apps"

Doc = dict[str, Any]


@cache
def helm_binary() -> str:
    candidates = [os.environ.get("HELM"), shutil.which("helm"), str(ROOT / ".tools/bin/helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no helm binary: set HELM, put helm on PATH, or run `make helm`", pytrace=False)


def _helm_env(home: Path) -> dict[str, str]:
    # Keep helm away from the user's config and any cluster: the tests are hermetic.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBE"))}
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "no-kubeconfig"),
    )
    return env


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


class HelmError(Exception):
    """helm refused to render; the message is its stderr."""


def _values_args(values: tuple[Path, ...], sets: tuple[tuple[str, str], ...]) -> list[str]:
    args: list[str] = []
    for path in values:
        args += ["--values", str(path)]
    for key, value in sets:
        args += ["--set-json", f"{key}={value}"]
    return args


@cache
def _run(args: tuple[str, ...], home: Path) -> str:
    result = subprocess.run(
        [helm_binary(), *args],
        capture_output=True,
        text=True,
        env=_helm_env(home),
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return result.stdout


@dataclass(frozen=True)
class Manifests:
    """The documents of one render, with lookups by kind and name."""

    docs: tuple[Doc, ...]

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert found, f"no {kind}/{name}; have {self.names()}"
        assert len(found) == 1, f"{len(found)} of {kind}/{name}"
        return found[0]

    def find(self, kind: str, name: str) -> Doc | None:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return found[0] if found else None

    def names(self) -> list[str]:
        return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in self.docs)

    def __iter__(self) -> Iterator[Doc]:
        return iter(self.docs)


class Renderer:
    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(
        self,
        *values: Path,
        chart: Path = CHART,
        release: str = RELEASE,
        namespace: str = NAMESPACE,
        **sets: Any,
    ) -> Manifests:
        """`helm template`; keyword arguments are --set-json values, `__` for `.`."""
        args = (
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            *_values_args(values, _sets(sets)),
        )
        text = _run(args, self.home)
        docs = tuple(d for d in yaml.safe_load_all(text) if d)
        return Manifests(docs)

    def error(self, *values: Path, chart: Path = CHART, **sets: Any) -> str:
        """The error helm gives for these values; fails the test if it renders."""
        try:
            self(*values, chart=chart, **sets)
        except HelmError as exc:
            return str(exc)
        pytest.fail(f"helm rendered values it should refuse: {sets}")

    def notes(self, **sets: Any) -> str:
        """NOTES.txt as `helm install` would print it.

        `helm install --dry-run` prints the notes, but Helm 3 still asks a cluster for
        its version there. Instead, a copy of the chart gets one more template that
        includes NOTES.txt (helm parses it with the others) into a ConfigMap.
        """
        chart = self.home / "notes-chart"
        if not chart.exists():
            shutil.copytree(CHART, chart)
            (chart / "templates" / "zz-notes.yaml").write_text(_NOTES_TEMPLATE)
        manifests = self(chart=chart, **sets)
        notes: str = manifests.get("ConfigMap", "rendered-notes")["data"]["NOTES.txt"]
        return notes


_NOTES_TEMPLATE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: rendered-notes
data:
  NOTES.txt: {{ include (print .Template.BasePath "/NOTES.txt") . | toJson }}
"""


def _sets(sets: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((key.replace("__", "."), json.dumps(value)) for key, value in sorted(sets.items()))


@pytest.fixture(scope="session")
def render(helm_home: Path) -> Renderer:
    return Renderer(helm_home)


@pytest.fixture(scope="session")
def default(render: Renderer) -> Manifests:
    return render()


@pytest.fixture(scope="session")
def all_features(render: Renderer) -> Manifests:
    return render(ALL_FEATURES)


@pytest.fixture(scope="session")
def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


@pytest.fixture(scope="session")
def app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


# Helpers over rendered objects


def pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "Pod":
        spec: Doc = doc["spec"]
        return spec
    template_spec: Doc = doc["spec"]["template"]["spec"]
    return template_spec


def container(doc: Doc, name: str | None = None) -> Doc:
    containers = pod_spec(doc)["containers"]
    if name is None:
        assert len(containers) == 1, containers
        return containers[0]  # type: ignore[no-any-return]
    return next(c for c in containers if c["name"] == name)


def env_of(doc: Doc) -> dict[str, Doc]:
    """The container's env entries by name; a duplicate name fails the test."""
    entries = container(doc).get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def env_value(doc: Doc, name: str) -> str | None:
    entry = env_of(doc).get(name)
    return None if entry is None else entry.get("value")


def workloads(manifests: Manifests) -> list[Doc]:
    """Every object that makes pods: the Deployments and the helm test Pod."""
    return [d for d in manifests if d["kind"] in ("Deployment", "Pod")]
