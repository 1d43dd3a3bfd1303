"""Reading the Grafana dashboards the way Grafana would: panels, targets, variables.

Enough PromQL is understood here to find every selector and metric name in a query;
it is not a parser, and the live test hands every query to a real Prometheus anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.processes import ROOT

DASHBOARD_DIR = ROOT / "deploy/helm/platform/dashboards"
# uid -> (file, the job its `job` variable selects by default)
EXPECTED = {
    "gateway-overview.json": ("platform-gateway-overview", "gateway"),
    "downstream-mock-overview.json": ("platform-downstream-mock-overview", "downstream-mock"),
}
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# What the substitution gives Grafana's built-in interval variables.
BUILTIN_VALUES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1m"}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_TOKEN = re.compile(
    r"(?P<braces>\{[^}]*\})"
    r"|(?P<range>\[[^\]]*\])"
    r"|(?P<grouping>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))"
    # A number or a duration (5m, 1h30m).
    r"|(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+)?)*)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
)
_AGGREGATION_CLAUSE = re.compile(r"\s*(?:by|without)\s*\(")


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel: str
    panel_id: int
    ref_id: str
    expr: str


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(path: Path) -> Iterator[Target]:
    dashboard = load(path)
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield Target(
                path.name,
                str(panel.get("title")),
                int(panel["id"]),
                str(target.get("refId")),
                str(target.get("expr", "")),
            )


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """What each variable expands to when the dashboard opens with its defaults.

    A variable whose default is All expands to its `allValue`; any other to its current
    value. Built-in interval variables get one minute.
    """
    values = dict(BUILTIN_VALUES)
    for name, var in variables(dashboard).items():
        current = var.get("current", {}).get("value")
        if isinstance(current, list):
            current = current[0] if len(current) == 1 else "|".join(current)
        if current == "$__all":
            assert var.get("includeAll"), f"{name}: All is the default but not offered"
            assert "allValue" in var, f"{name}: All without allValue"
            values[name] = var["allValue"]
        elif current is not None:
            values[name] = str(current)
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise AssertionError(f"undefined variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def metric_uses(expr: str) -> list[tuple[str, str | None]]:
    """Each metric name in `expr` with its label matchers (None when it has no braces)."""
    # Blank out string contents, keeping every position, so that nothing quoted is
    # mistaken for structure and matchers can be cut from the original text.
    masked = _STRING.sub(lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expr)
    uses: list[tuple[str, str | None]] = []
    for match in _TOKEN.finditer(masked):
        name = match.group("name")
        if name is None or name.lower() in _KEYWORDS:
            continue
        rest = masked[match.end() :]
        following = rest.lstrip()[:1]
        if following == "(" or _AGGREGATION_CLAUSE.match(rest):
            continue  # a function, or an aggregation such as `sum by (x) (...)`
        if following == "{":
            open_at = match.end() + rest.index("{")
            close_at = masked.index("}", open_at)
            uses.append((name, expr[open_at + 1 : close_at]))
        else:
            uses.append((name, None))
    return uses


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in metric_uses(expr)}
