"""Every dashboard query, evaluated by a real Prometheus scraping the real services.

Prometheus scrapes the gateway and the mock every second under the job names compose
uses (`gateway`, `downstream-mock`) and without Kubernetes labels, so each query's
`namespace=~".*"` must also match series that have no namespace at all. After traffic
that includes every kind of error the dashboards show, each panel query, with its
template variables set as the dashboard opens, must succeed and return at least one
series. A query naming a metric the services do not export fails.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.harness.processes import wait_for
from tests.harness.scrape import Scrape, scrape

from .dashboards import (
    EXPECTED,
    dashboard_files,
    load,
    metric_names,
    substitute,
    targets,
    variable_values,
    variables,
)
from .support import (
    PROBE_PATHS,
    Prometheus,
    Stack,
    prometheus_binary,
    start_prometheus,
)

JOBS = {"gateway": "gateway", "downstream-mock": "mock"}
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


MISSING = (
    "no prometheus binary: run `make observability`, which installs the Debian package"
    " `prometheus` (or: apt-get install --no-install-recommends prometheus)"
)


def require(prometheus: Prometheus | None) -> Prometheus:
    """Fail (never skip) where Prometheus is missing: a skipped check would look green."""
    if prometheus is None:
        pytest.fail(MISSING, pytrace=False)
    return prometheus


@pytest.fixture(scope="module")
def prometheus(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus | None]:
    binary = prometheus_binary()
    if binary is None:
        yield None  # each test fails with MISSING: a failure, not a setup error
        return
    server = start_prometheus(
        binary,
        tmp_path_factory.mktemp("prometheus"),
        {"gateway": stack.gateway, "downstream-mock": stack.mock},
    )
    try:

        def all_up() -> bool:
            found = {t["labels"]["job"]: t["health"] for t in server.targets()}
            return found == dict.fromkeys(JOBS, "up")

        wait_for("both targets to be scraped", all_up, timeout=30, interval=0.25)
        yield server
    finally:
        server.stop()


def _server_requests(s: Scrape) -> float:
    return sum(
        value
        for (name, labels), value in s.samples.items()
        if name == "http_server_requests_total" and dict(labels)["route"] not in PROBE_PATHS
    )


def drive_traffic(stack: Stack) -> None:
    """Successes and every kind of error the dashboards break out."""
    gw_before = _server_requests(scrape(stack.gateway))
    sent = 0
    expected: list[tuple[str, str, int]] = (
        [("GET", "/mock/echo", 200)] * 20
        + [("POST", "/mock/echo", 200)] * 3
        + [("GET", f"/mock/items/{secrets.randbelow(10**6) + 10**9}", 404)] * 3
        + [("GET", f"/no-route-{secrets.token_hex(3)}", 404)] * 3
        + [("GET", "/mock/status/503", 503)] * 3
        + [("GET", "/unreachable/x", 502)] * 2
        + [("GET", "/strict/delay/5", 504)]
    )
    with httpx.Client(base_url=stack.gateway.url, timeout=15) as client:
        for method, path, status in expected:
            content = secrets.token_bytes(2048) if method == "POST" else None
            response = client.request(method, path, content=content)
            assert response.status_code == status, f"{method} {path}: {response.status_code}"
            sent += 1
    wait_for(
        "the gateway to count the traffic",
        lambda: _server_requests(scrape(stack.gateway)) == gw_before + sent,
        timeout=10,
    )
    wait_for(
        "the mock to count its 503s",
        lambda: (
            scrape(stack.mock).value(
                "http_server_requests_total", method="GET", route="/status/{code}", status="503"
            )
            >= 3
        ),
        timeout=10,
    )


def wait_for_scrapes(prometheus: Prometheus, since: float, count: int = 2) -> None:
    """Until every job has been scraped `count` times after `since` (a Unix time)."""
    seen: dict[str, set[float]] = {job: set() for job in JOBS}

    def enough() -> bool:
        for job in JOBS:
            # The start of the job's latest scrape. (On a plain selector only: on any other
            # expression, such as `up == 1`, timestamp() gives the evaluation time.)
            answer = prometheus.query(f'timestamp(up{{job="{job}"}})')
            for series in answer["data"]["result"]:
                stamp = float(series["value"][1])
                if stamp > since:
                    seen[job].add(stamp)
        return all(len(stamps) >= count for stamps in seen.values())

    wait_for(f"{count} scrapes of every job after the traffic", enough, timeout=30, interval=0.3)
    health = {t["labels"]["job"]: t["health"] for t in prometheus.targets()}
    assert health == dict.fromkeys(JOBS, "up"), health


@pytest.fixture(scope="module")
def after_traffic(stack: Stack, prometheus: Prometheus | None) -> Prometheus | None:
    if prometheus is None:
        return None
    drive_traffic(stack)
    wait_for_scrapes(prometheus, since=time.time())
    return prometheus


def _label_values(prometheus: Prometheus, definition: str, values: dict[str, str]) -> list[str]:
    match = _LABEL_VALUES.match(substitute(definition, values))
    assert match, f"not a label_values() query: {definition}"
    selector, label = match.groups()
    params = {"match[]": selector} if selector else {}
    answer = prometheus.api(f"label/{label}/values", **params)
    assert answer["status"] == "success", answer
    return [str(v) for v in answer["data"]]


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_every_panel_query_returns_series(after_traffic: Prometheus | None, path: Path) -> None:
    prometheus = require(after_traffic)
    dashboard = load(path)
    values = variable_values(dashboard)
    failures = []
    evaluated = 0
    for target in targets(path):
        expr = substitute(target.expr, values)
        answer: dict[str, Any] = prometheus.query(expr)
        evaluated += 1
        where = f"panel {target.panel_id} {target.panel!r} {target.ref_id}: {expr}"
        if answer.get("status") != "success":
            failures.append(f"{where}\n    -> {answer.get('errorType')}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            failures.append(f"{where}\n    -> no series")

    assert evaluated >= 8
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_variables_resolve_against_prometheus(after_traffic: Prometheus | None, path: Path) -> None:
    """The variable queries list what the dashboard needs: its default job, some routes."""
    prometheus = require(after_traffic)
    dashboard = load(path)
    values = variable_values(dashboard)
    found = variables(dashboard)
    jobs = _label_values(prometheus, found["job"]["definition"], values)
    regex = found["job"].get("regex", "")
    if regex:
        jobs = [job for job in jobs if re.search(regex.strip("/"), job)]
    if path.name in EXPECTED:
        assert jobs == [EXPECTED[path.name][1]], jobs
    # compose has no namespace label: the list is empty and All (`.*`) must still match.
    assert _label_values(prometheus, found["namespace"]["definition"], values) == []
    routes = _label_values(prometheus, found["route"]["definition"], values)
    assert routes, "no routes for the route variable"


def test_dashboard_metrics_are_exported(stack: Stack, after_traffic: Prometheus | None) -> None:
    """Every metric a dashboard names is exported; print the families no dashboard uses."""
    prometheus = require(after_traffic)
    exported: dict[str, str] = {}  # sample name -> family
    families: dict[str, str] = {}  # family -> which service
    for name, service in (("gateway", stack.gateway), ("downstream-mock", stack.mock)):
        current = scrape(service)
        exported.update(current.sample_names)
        for family in current.families:
            families.setdefault(family, name)
    used = {
        metric
        for path in dashboard_files()
        for t in targets(path)
        for metric in metric_names(t.expr)
    }
    assert used, "no metrics in the dashboards"
    missing = sorted(used - set(exported))
    assert not missing, f"dashboards query metrics no service exports: {missing}"
    in_prometheus = set(prometheus.api("label/__name__/values")["data"])
    assert used <= in_prometheus, sorted(used - in_prometheus)

    used_families = {exported[metric] for metric in used}
    unused = sorted(set(families) - used_families)
    print(f"\nexported families no dashboard uses: {unused or 'none'}")
