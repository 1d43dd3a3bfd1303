"""deploy/otel-collector/config.yaml: what can be checked without a collector binary.

The collector refuses to start on a pipeline naming an undefined component or an
extension that is not configured; these tests find such mistakes before a container
does. They also pin what the services and compose rely on: OTLP on 4317/4318, traces to
Jaeger, the collector's own metrics on 8888 and a health check on 13133.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from tests.harness.processes import ROOT

CONFIG = ROOT / "deploy/otel-collector/config.yaml"
SECTIONS = ("receivers", "processors", "exporters", "extensions", "connectors")
HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")
# The compose image; the config's comment names the version its syntax is written for.
PINNED = re.compile(r"otel/opentelemetry-collector-contrib:(\d+)\.(\d+)\.(\d+)")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "the collector config must be a YAML mapping"
    return data


def component_type(name: str) -> str:
    """`otlp_grpc/jaeger` is an instance named `jaeger` of the component type `otlp_grpc`."""
    return name.split("/", 1)[0]


def endpoints(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every `endpoint` value anywhere in the config, with where it is."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "endpoint":
                found.append((where, value))
            found.extend(endpoints(value, where))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(endpoints(value, f"{path}[{index}]"))
    return found


def test_only_known_top_level_sections(config: dict[str, Any]) -> None:
    assert set(config) <= {*SECTIONS, "service"}, sorted(config)
    assert "service" in config


def test_every_pipeline_component_is_defined(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    assert pipelines, "no pipelines"
    for name, pipeline in pipelines.items():
        assert component_type(name) in {"traces", "metrics", "logs"}, name
        assert pipeline.get("receivers"), f"pipeline {name} has no receivers"
        assert pipeline.get("exporters"), f"pipeline {name} has no exporters"
        for kind in ("receivers", "processors", "exporters"):
            defined = config.get(kind) or {}
            for component in pipeline.get(kind, []):
                assert component in defined, f"pipeline {name}: {kind[:-1]} {component} undefined"


def test_every_defined_component_is_used(config: dict[str, Any]) -> None:
    """An unused component is configured for nothing: most likely a typo in a pipeline."""
    pipelines = config["service"]["pipelines"].values()
    for kind in ("receivers", "processors", "exporters"):
        used = {c for p in pipelines for c in p.get(kind, [])}
        assert set(config.get(kind) or {}) == used, f"{kind}: defined but unused"
    assert set(config.get("extensions") or {}) == set(config["service"].get("extensions", []))


def test_every_service_extension_is_defined(config: dict[str, Any]) -> None:
    extensions = config["service"].get("extensions", [])
    assert "health_check" in extensions
    for name in extensions:
        assert name in (config.get("extensions") or {}), f"extension {name} undefined"


def test_traces_flow_from_otlp_to_jaeger(config: dict[str, Any]) -> None:
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    # The memory limiter must see data first, the batcher last.
    assert traces["processors"][0] == "memory_limiter"
    assert traces["processors"][-1] == "batch"
    assert config["processors"]["memory_limiter"]["check_interval"]
    jaeger = [e for e in traces["exporters"] if component_type(e) in {"otlp", "otlp_grpc"}]
    assert len(jaeger) == 1, traces["exporters"]
    exporter = config["exporters"][jaeger[0]]
    assert exporter["endpoint"] == "jaeger:4317"
    assert exporter["tls"]["insecure"] is True
    assert "debug" in traces["exporters"]
    assert config["exporters"]["debug"]["verbosity"] == "basic"


def test_otlp_receiver_listens_on_both_protocols(config: dict[str, Any]) -> None:
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert config["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"


def test_endpoints_are_host_port(config: dict[str, Any]) -> None:
    found = endpoints(config)
    assert len(found) >= 4, found
    for where, value in found:
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
        assert HOST_PORT.match(value), f"{where}: {value!r} is not host:port"
        assert 0 < int(value.rsplit(":", 1)[1]) < 65536, f"{where}: port out of range"


def test_own_metrics_use_the_readers_syntax_of_the_pinned_version(
    config: dict[str, Any],
) -> None:
    """From v0.123.0 `metrics.address` is ignored: only `readers` exposes port 8888."""
    pinned = PINNED.search(CONFIG.read_text(encoding="utf-8"))
    assert pinned, "the config must name the collector image version it is written for"
    version = tuple(int(part) for part in pinned.groups())
    assert version >= (0, 123, 0)
    metrics = config["service"]["telemetry"]["metrics"]
    assert "address" not in metrics
    prometheus = metrics["readers"][0]["pull"]["exporter"]["prometheus"]
    assert prometheus == {"host": "0.0.0.0", "port": 8888}
    if version >= (0, 144, 0):  # the OTLP gRPC exporter's own name since then
        assert all(component_type(e) != "otlp" for e in config["exporters"])


def test_compose_mounts_this_file() -> None:
    """The compose file (owned elsewhere) is the user of this config: keep them joined."""
    compose = ROOT / "deploy/compose/compose.yaml"
    if not compose.exists():
        pytest.fail(f"{compose} is missing: nothing runs this collector config")
    text = compose.read_text(encoding="utf-8")
    assert "../otel-collector/config.yaml" in text
    pinned = PINNED.search(CONFIG.read_text(encoding="utf-8"))
    assert pinned
    assert pinned.group(0) in text, "compose runs another collector version than the config names"
