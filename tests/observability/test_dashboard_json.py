"""The Grafana dashboards' structure: no processes needed.

Grafana loads a dashboard with duplicate panel ids or a hard-coded datasource uid
without complaint and then shows the wrong panel or "datasource not found"; a selector
without the job/namespace matchers silently mixes compose and Kubernetes series. These
tests make each of those a failure. Whether the queries return data is
test_dashboards.py's job, against a real Prometheus.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.breaker import STATE_VALUE

from .dashboards import (
    BUILTIN_VALUES,
    DASHBOARD_DIR,
    DATASOURCE_REF,
    EXPECTED,
    all_panels,
    dashboard_files,
    load,
    metric_names,
    metric_uses,
    substitute,
    targets,
    variable_values,
    variables,
)

FILES = dashboard_files()
IDS = [path.name for path in FILES]


def test_the_expected_dashboards_exist() -> None:
    assert {path.name for path in FILES} >= set(EXPECTED), f"in {DASHBOARD_DIR}: {IDS}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_dashboard_metadata(path: Path) -> None:
    dashboard = load(path)
    if path.name in EXPECTED:
        assert dashboard["uid"] == EXPECTED[path.name][0], "the uid must stay stable"
    assert 0 < len(dashboard["uid"]) <= 40
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert dashboard["title"]
    assert dashboard["editable"] is True
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "platform" in dashboard["tags"]
    assert len(dashboard["tags"]) >= 2
    assert "$__rate_interval" in path.read_text(encoding="utf-8")


def test_uids_are_unique_across_dashboards() -> None:
    uids = [load(path)["uid"] for path in FILES]
    assert len(uids) == len(set(uids)), uids


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_panels(path: Path) -> None:
    dashboard = load(path)
    panels = list(all_panels(dashboard))
    assert len(panels) >= 8
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title"), where
        grid = panel["gridPos"]
        assert min(grid["h"], grid["w"]) > 0, where
        assert min(grid["x"], grid["y"]) >= 0, where
        assert grid["x"] + grid["w"] <= 24, f"{where} is wider than the dashboard"
        if panel["type"] == "row":
            assert not panel.get("targets"), where
            continue
        assert panel.get("description"), f"{where} has no description"
        assert panel["datasource"] == DATASOURCE_REF, where
        assert panel.get("targets"), f"{where} has no queries"
        ref_ids = [target.get("refId") for target in panel["targets"]]
        assert all(ref_ids), f"{where}: a target without refId"
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: duplicate refIds {ref_ids}"
        for target in panel["targets"]:
            assert str(target.get("expr", "")).strip(), f"{where} {target['refId']}: no expr"
            assert target.get("datasource", DATASOURCE_REF) == DATASOURCE_REF, where
    assert not _overlapping(panels), _overlapping(panels)


def _overlapping(panels: list[dict[str, Any]]) -> list[tuple[int, int]]:
    boxes = [(p["id"], p["gridPos"]) for p in panels]
    clashes = []
    for index, (a, ga) in enumerate(boxes):
        for b, gb in boxes[index + 1 :]:
            if (
                ga["x"] < gb["x"] + gb["w"]
                and gb["x"] < ga["x"] + ga["w"]
                and ga["y"] < gb["y"] + gb["h"]
                and gb["y"] < ga["y"] + ga["h"]
            ):
                clashes.append((a, b))
    return clashes


def _datasource_refs(node: Any) -> list[Any]:
    refs: list[Any] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                refs.append(value)
            refs.extend(_datasource_refs(value))
    elif isinstance(node, list):
        for value in node:
            refs.extend(_datasource_refs(value))
    return refs


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_datasource_is_only_ever_the_variable(path: Path) -> None:
    dashboard = load(path)
    refs = _datasource_refs(dashboard)
    assert refs, "no datasource references at all"
    assert all(ref == DATASOURCE_REF for ref in refs), [r for r in refs if r != DATASOURCE_REF]
    # No uid anywhere but the dashboard's own and the variable reference.
    uids = re.findall(r'"uid":\s*"([^"]*)"', path.read_text(encoding="utf-8"))
    assert set(uids) <= {dashboard["uid"], "${datasource}"}, uids


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_variables(path: Path) -> None:
    dashboard = load(path)
    found = variables(dashboard)
    datasource = found["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    job = found["job"]
    assert job["type"] == "query"
    assert job["datasource"] == DATASOURCE_REF
    assert re.fullmatch(r"label_values\(\w+, job\)", job["definition"]), job["definition"]
    assert job["query"] == job["definition"]
    if path.name in EXPECTED:
        assert job["current"]["value"] == EXPECTED[path.name][1]
    namespace = found["namespace"]
    assert namespace["type"] == "query"
    assert namespace["includeAll"] is True
    assert namespace["allValue"] == ".*", "All must also match series without a namespace"
    assert "namespace)" in namespace["definition"]
    assert variable_values(dashboard)["namespace"] == ".*"
    for var in found.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE_REF, var["name"]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_query_is_scoped_and_uses_the_rate_interval(path: Path) -> None:
    values = variable_values(load(path))
    exprs = list(targets(path))
    assert exprs
    for target in exprs:
        where = f"{path.name} panel {target.panel_id} {target.ref_id}: {target.expr}"
        uses = metric_uses(target.expr)
        assert uses, f"{where}: no metric"
        for name, matchers in uses:
            assert matchers is not None, f"{where}: {name} without label matchers"
            assert 'job=~"$job"' in matchers, f"{where}: {name} not scoped to $job"
            assert 'namespace=~"$namespace"' in matchers, f"{where}: {name} not scoped"
        for window in re.findall(r"\[([^\]]*)\]", target.expr):
            assert window == "$__rate_interval", f"{where}: range [{window}]"
        expanded = substitute(target.expr, values)  # fails on an undefined variable
        assert "$" not in expanded, where


def test_substitution() -> None:
    values = {**BUILTIN_VALUES, "job": "gateway", "namespace": ".*"}
    expr = 'rate(x{job=~"$job", namespace=~"${namespace}"}[$__rate_interval]) [[job]]'
    assert substitute(expr, values) == 'rate(x{job=~"gateway", namespace=~".*"}[1m]) gateway'
    with pytest.raises(AssertionError, match="undefined variable"):
        substitute("x{a=~'$nope'}", values)


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{job=~"$job", x="y{z}"}'
        '[$__rate_interval]))) / on (route) group_left b_total{c="d"} or vector(0) + c offset 5m'
    )
    assert metric_uses(expr) == [
        ("a_bucket", 'job=~"$job", x="y{z}"'),
        ("b_total", 'c="d"'),
        ("c", None),
    ]


def _used(path: Path) -> set[str]:
    return {name for target in targets(path) for name in metric_names(target.expr)}


# The gateway's policy metrics (README, "Metrics"), each shown in the Resilience row.
RESILIENCE_METRICS = {
    "gateway_upstream_retries_total",
    "gateway_retry_budget_exhausted_total",
    "gateway_circuit_state",
    "gateway_circuit_transitions_total",
    "gateway_ratelimit_decisions_total",
    "gateway_ratelimit_backend_errors_total",
}


def test_gateway_dashboard_covers_the_issue() -> None:
    path = DASHBOARD_DIR / "gateway-overview.json"
    assert _used(path) >= {
        "http_server_requests_total",
        "http_server_request_duration_seconds_bucket",
        "http_server_requests_in_flight",
        "gateway_upstream_requests_total",
        "gateway_upstream_response_seconds_bucket",
        "gateway_upstream_requests_in_flight",
        "gateway_response_body_bytes_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        *RESILIENCE_METRICS,
    }
    text = " ".join(t.expr for t in targets(path))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, route)" in text


def _rows(dashboard: dict[str, Any]) -> dict[int, str]:
    """Panel id -> the title of the row it sits under (by position, as Grafana shows it)."""
    panels = list(all_panels(dashboard))
    rows = sorted((p["gridPos"]["y"], p["title"]) for p in panels if p["type"] == "row")
    found = {}
    for panel in panels:
        if panel["type"] != "row":
            above = [title for y, title in rows if y <= panel["gridPos"]["y"]]
            found[panel["id"]] = above[-1] if above else ""
    return found


def test_resilience_row_shows_every_policy_metric() -> None:
    path = DASHBOARD_DIR / "gateway-overview.json"
    rows = _rows(load(path))
    shown = {
        name
        for target in targets(path)
        if rows.get(target.panel_id) == "Resilience"
        for name in metric_names(target.expr)
    }
    assert shown >= RESILIENCE_METRICS, sorted(RESILIENCE_METRICS - shown)
    text = " ".join(t.expr for t in targets(path) if rows.get(t.panel_id) == "Resilience")
    for grouping in ("(route, reason)", "(upstream, to)", "(route, decision)", "(route, policy)"):
        assert f"sum by {grouping} (rate(" in text, grouping
    assert 'decision="limited"' in text, "no limited share"


def test_circuit_state_panel_names_the_breaker_states() -> None:
    """The worst worker's state per upstream, with the gateway's own encoding as text."""
    dashboard = load(DASHBOARD_DIR / "gateway-overview.json")
    panels = [
        panel
        for panel in all_panels(dashboard)
        if any(
            "gateway_circuit_state" in metric_names(t.get("expr", ""))
            for t in panel.get("targets", [])
        )
    ]
    assert panels, "no panel shows gateway_circuit_state"
    for panel in panels:
        where = f"panel {panel['id']} {panel['title']!r}"
        assert panel["type"] in ("state-timeline", "stat"), where
        for target in panel["targets"]:
            # max over workers (pid) and instances: the worst state, since open > half-open.
            assert target["expr"].startswith("max by (upstream) (gateway_circuit_state{"), where
        defaults = panel["fieldConfig"]["defaults"]
        texts = {
            value: option["text"]
            for mapping in defaults["mappings"]
            if mapping["type"] == "value"
            for value, option in mapping["options"].items()
        }
        assert texts == {
            str(number): state.value.replace("_", "-") for state, number in STATE_VALUE.items()
        }, where
        worst = max(STATE_VALUE, key=STATE_VALUE.__getitem__)
        assert worst.value == "open", "max() over workers must pick open"


def test_mock_dashboard_covers_the_issue() -> None:
    path = DASHBOARD_DIR / "downstream-mock-overview.json"
    assert _used(path) >= {
        "http_server_requests_total",
        "http_server_request_duration_seconds_bucket",
        "http_server_requests_in_flight",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    }
    assert not any(name.startswith("gateway_") for name in _used(path))
