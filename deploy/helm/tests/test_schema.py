"""values.schema.json: generated from values.yaml, current, and enforced by helm."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import CHART, ROOT, Renderer

SCRIPT = ROOT / "deploy" / "helm" / "scripts" / "gen_schema.py"


@pytest.fixture(scope="module")
def gen_schema() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_schema", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_schema"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    chart = tmp_path / "platform"
    shutil.copytree(CHART, chart)
    return chart


def test_the_committed_schema_is_current(gen_schema: ModuleType) -> None:
    assert gen_schema.main(["--check"]) == 0


def test_generation_is_deterministic(gen_schema: ModuleType) -> None:
    first = gen_schema.generate(CHART / "values.yaml")
    assert first == gen_schema.generate(CHART / "values.yaml")
    assert first == (CHART / "values.schema.json").read_text()


def test_a_changed_value_is_drift(
    gen_schema: ModuleType, chart_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = chart_copy / "values.yaml"
    values.write_text(values.read_text().replace("  replicaCount: 2\n", "  replicaCount: 2.5\n"))
    assert gen_schema.main(["--check", "--chart", str(chart_copy)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert gen_schema.main(["--chart", str(chart_copy)]) == 0
    assert gen_schema.main(["--check", "--chart", str(chart_copy)]) == 0


def test_an_undocumented_value_is_an_error(
    gen_schema: ModuleType, chart_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = chart_copy / "values.yaml"
    values.write_text(
        values.read_text().replace("  replicaCount: 2\n", "  replicaCount: 2\n  surprise: 1\n", 1)
    )
    assert gen_schema.main(["--check", "--chart", str(chart_copy)]) == 2
    assert "gateway.surprise: undocumented value" in capsys.readouterr().err


def test_a_null_default_needs_a_type_hint(
    gen_schema: ModuleType, chart_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = chart_copy / "values.yaml"
    text = values.read_text().replace(
        "# -- (int) The pod's terminationGracePeriodSeconds",
        "# -- The pod's terminationGracePeriodSeconds",
        1,
    )
    values.write_text(text)
    assert gen_schema.main(["--chart", str(chart_copy)]) == 2
    assert "gateway.terminationGracePeriodSeconds: a null default needs a type hint" in (
        capsys.readouterr().err
    )


def _leaves(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for key, sub in schema.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        if "properties" in sub:
            found += _leaves(sub, here)
        else:
            found.append((here, sub))
    return found


def test_every_value_has_a_description_and_a_type() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    leaves = _leaves(schema)
    assert len(leaves) > 80, len(leaves)
    for path, sub in leaves:
        assert sub.get("description"), f"{path} has no description"
        assert sub.get("type"), f"{path} has no type"


def test_the_readme_lists_every_value_once() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    keys = [row.split("`")[1] for row in rows]
    leaves = [path for path, _ in _leaves(schema)]
    assert sorted(set(keys) & set(leaves)) == sorted(leaves)
    for leaf in leaves:
        assert keys.count(leaf) == 1, leaf


def test_the_readme_table_is_generated(
    gen_schema: ModuleType, chart_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = chart_copy / "README.md"
    readme.write_text(
        readme.read_text().replace(
            "| `gateway.workers` | integer | `2` |", "| `gateway.workers` | integer | `3` |"
        )
    )
    assert gen_schema.main(["--check", "--chart", str(chart_copy)]) == 1
    assert "README.md is stale" in capsys.readouterr().err


def test_chart_defined_maps_are_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    gateway = schema["properties"]["gateway"]
    assert gateway["additionalProperties"] is False
    assert gateway["properties"]["autoscaling"]["additionalProperties"] is False
    # Free-form maps stay open.
    assert "additionalProperties" not in gateway["properties"]["podAnnotations"]


@pytest.mark.parametrize(
    ("sets", "names"),
    [
        ({"gateway__replicas": 3}, ["replicas"]),
        ({"gateway__replicaCount": "two"}, ["replicaCount"]),
        ({"gateway__logLevel": "loud"}, ["logLevel"]),
        ({"networkPolicy__enabled": "yes"}, ["networkPolicy", "enabled"]),
        ({"gateway__service__type": "Ingress"}, ["service", "type"]),
        ({"gateway__routes": [{"name": "a"}]}, ["routes", "upstream"]),
    ],
)
def test_helm_enforces_the_schema(render: Renderer, sets: dict[str, Any], names: list[str]) -> None:
    # Helm 3 (gojsonschema) and Helm 4 word these differently; both name the value.
    error = render.error(**sets)
    assert "schema" in error, error
    for name in names:
        assert name in error, error


def test_the_schema_accepts_the_ci_values(render: Renderer) -> None:
    from .conftest import ALL_FEATURES, KIND_VALUES

    assert render(ALL_FEATURES).of_kind("Deployment")
    assert render(KIND_VALUES).of_kind("Deployment")
