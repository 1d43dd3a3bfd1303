"""Every dashboard query, evaluated by a real Prometheus scraping the real services.

Prometheus scrapes the gateway and the mock every second under the job names compose
uses (`gateway`, `downstream-mock`) and without Kubernetes labels, so each query's
`namespace=~".*"` must also match series that have no namespace at all. After traffic
that includes every kind of error the dashboards show, each panel query, with its
template variables set as the dashboard opens, must succeed and return at least one
series. A query naming a metric the services do not export fails.

The traffic also goes through the suite's own routes (routes.yaml), so that the
Resilience row has something to show: retries until the retry budget refuses more, a
breaker that opens on an upstream that refuses connections, a rate limit that allows and
limits, and a Redis rate limit whose Redis is down, failing open and failing closed.
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
    DASHBOARD_DIR,
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
        sent += drive_resilience_traffic(client)
    wait_for(
        "the gateway to count the traffic",
        lambda: _server_requests(scrape(stack.gateway)) == gw_before + sent,
        timeout=10,
    )
    missing = [
        what for what, seen in resilience_seen(stack, scrape(stack.gateway)).items() if not seen
    ]
    assert not missing, f"the gateway did not count: {missing}"
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


def drive_resilience_traffic(client: httpx.Client) -> int:
    """Requests to the suite's own routes (routes.yaml); returns how many were sent.

    Retry budgets, breakers and memory buckets are per gunicorn worker, and which worker
    a request reaches is not ours to choose, so where the answer depends on it the
    checks hold for any split over the 2 workers.
    """
    plan = {
        "/retrying/status/503": 6,
        "/tripping/x": 6,
        "/limited/echo": 8,
        "/redis-fail-open/echo": 2,
        "/redis-fail-closed/echo": 2,
    }
    got = {path: [client.get(path).status_code for _ in range(n)] for path, n in plan.items()}
    # The mock's 503, after 2 retries or after the budget (2 per worker) refused one.
    assert got["/retrying/status/503"] == [503] * 6, got
    # Connect errors (502) until a worker's breaker has seen 2 in a row, then refusals
    # (503): one worker gets at least 3 of the 6 requests.
    tripping = got["/tripping/x"]
    assert set(tripping) <= {502, 503}, got
    assert tripping[:2] == [502, 502], got
    assert 503 in tripping, got
    # A bucket of 2 per worker that refills once in 10 s: at most 5 of 8 allowed.
    limited = got["/limited/echo"]
    assert set(limited) <= {200, 429}, got
    assert limited[0] == 200, got
    assert limited.count(429) >= 3, got
    # Redis refuses connections: fail open lets requests through, fail closed answers 503.
    assert got["/redis-fail-open/echo"] == [200, 200], got
    assert got["/redis-fail-closed/echo"] == [503, 503], got
    return sum(plan.values())


def resilience_seen(stack: Stack, s: Scrape) -> dict[str, bool]:
    """Whether the gateway counted what drive_resilience_traffic must have caused."""
    mock, dead = stack.mock.url, stack.dead_upstream
    retries = s.by_label("gateway_upstream_retries_total", "reason", route="retrying")
    states = s.by_label("gateway_circuit_state", "pid", upstream=dead)  # per worker
    opened = s.value("gateway_circuit_transitions_total", upstream=dead, to="open")
    decisions = s.by_label("gateway_ratelimit_decisions_total", "decision", route="limited")
    redis_errors = "gateway_ratelimit_backend_errors_total"
    return {
        "retries on 503": retries.get("status_503", 0) >= 1,
        "retry budget exhausted": s.value("gateway_retry_budget_exhausted_total", upstream=mock)
        >= 1,
        "a worker's breaker open (2)": 2 in states.values(),
        "a transition to open": opened >= 1,
        "rate limit allowed": decisions.get("allowed", 0) >= 1,
        "rate limit limited": decisions.get("limited", 0) >= 3,
        "redis errors, let through": s.value(redis_errors, route="redis-fail-open", policy="allow")
        == 2,
        "redis errors, refused": s.value(redis_errors, route="redis-fail-closed", policy="deny")
        == 2,
    }


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


def _panel_query(path: Path, metric: str, *, extra: str = "") -> str:
    """The one panel query that reads `metric` (and contains `extra`), variables set."""
    found = [t for t in targets(path) if metric in metric_names(t.expr) and extra in t.expr]
    assert len(found) == 1, f"{metric}: {[(t.panel, t.expr) for t in found]}"
    return substitute(found[0].expr, variable_values(load(path)))


def test_resilience_panels_show_what_the_traffic_did(
    stack: Stack, after_traffic: Prometheus | None
) -> None:
    """Not just some series: the open breaker, the refusals and the limits themselves.

    The counters here are exported at 0 from start-up, so Prometheus saw them before the
    traffic and their rates are above 0. (Retries are counted from the first one only, so
    their first sample already holds the total: the series is there, its rate may be 0.)
    """
    prometheus = require(after_traffic)
    path = DASHBOARD_DIR / "gateway-overview.json"

    def values(expr: str, label: str) -> dict[str, float]:
        answer = prometheus.query(expr)
        assert answer.get("status") == "success", answer
        return {
            ",".join(s["metric"].get(part, "") for part in label.split(",")): float(s["value"][1])
            for s in answer["data"]["result"]
        }

    mock, dead = stack.mock.url, stack.dead_upstream
    state = values(_panel_query(path, "gateway_circuit_state"), "upstream")
    assert state[dead] == 2, f"the worst worker's breaker should read open (2): {state}"
    opened = values(_panel_query(path, "gateway_circuit_transitions_total"), "upstream,to")
    assert opened[f"{dead},open"] > 0, opened
    exhausted = values(_panel_query(path, "gateway_retry_budget_exhausted_total"), "upstream")
    assert exhausted[mock] > 0, exhausted
    retries = values(_panel_query(path, "gateway_upstream_retries_total"), "route,reason")
    assert "retrying,status_503" in retries, retries
    decisions = values(
        _panel_query(path, "gateway_ratelimit_decisions_total", extra="decision)"),
        "route,decision",
    )
    assert decisions["limited,allowed"] > 0, decisions
    assert decisions["limited,limited"] > 0, decisions
    share = values(
        _panel_query(path, "gateway_ratelimit_decisions_total", extra='decision="limited"'),
        "route",
    )
    assert 0 < share["limited"] < 1, share
    errors = values(_panel_query(path, "gateway_ratelimit_backend_errors_total"), "route,policy")
    assert errors["redis-fail-open,allow"] > 0, errors
    assert errors["redis-fail-closed,deny"] > 0, errors
