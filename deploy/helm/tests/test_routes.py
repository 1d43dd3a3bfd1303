"""The gateway's route table: rendered from values, accepted by the gateway itself, the
same demo table as services/gateway/routes.yaml, and rolled out when it changes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.routing import RouteTableError, load_route_table

from .conftest import ROOT, Manifests, Renderer, container, env_value, pod_spec

DEMO_ROUTES = ROOT / "services" / "gateway" / "routes.yaml"
MOUNT = "/etc/gateway"


def routes_text(manifests: Manifests, prefix: str = "platform") -> str:
    text: str = manifests.get("ConfigMap", f"{prefix}-gateway-routes")["data"]["routes.yaml"]
    return text


def checksum(manifests: Manifests, prefix: str = "platform") -> str:
    deployment = manifests.get("Deployment", f"{prefix}-gateway")
    value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/routes"]
    return value


def load(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return load_route_table(path, environ=environ or {})


def test_the_gateway_accepts_the_rendered_table(default: Manifests, tmp_path: Path) -> None:
    table = load(routes_text(default), tmp_path)
    assert [r.name for r in table.routes] == ["mock", "mock-scoped", "mock-strict", "unreachable"]


def test_default_routes_are_the_demo_table_pointed_at_the_release(
    default: Manifests, tmp_path: Path
) -> None:
    """Field for field what `make run` and compose serve, with the mock at its Service."""
    (tmp_path / "chart").mkdir()
    chart = load(routes_text(default), tmp_path / "chart")
    demo = load(
        DEMO_ROUTES.read_text(),
        tmp_path,
        environ={
            "MOCK_UPSTREAM": "http://platform-downstream-mock",
            "UNREACHABLE_UPSTREAM": "http://platform-downstream-mock:9",
        },
    )
    assert chart.routes == demo.routes


def test_upstreams_are_the_mock_service_and_its_closed_port(default: Manifests) -> None:
    routes = {r["name"]: r for r in yaml.safe_load(routes_text(default))["routes"]}
    assert routes["mock"]["upstream"] == "http://platform-downstream-mock"
    assert routes["mock-scoped"]["upstream"] == "http://platform-downstream-mock/echo/scoped"
    assert routes["unreachable"]["upstream"] == "http://platform-downstream-mock:9"
    closed = next(
        p
        for p in default.get("Service", "platform-downstream-mock")["spec"]["ports"]
        if p["name"] == "closed"
    )
    assert closed["port"] == closed["targetPort"] == 9


def test_upstreams_follow_the_name_prefix(all_features: Manifests) -> None:
    routes = yaml.safe_load(routes_text(all_features, "demo"))["routes"]
    assert routes[0]["upstream"] == "http://demo-downstream-mock"


def test_the_table_is_mounted_where_the_gateway_reads_it(default: Manifests) -> None:
    deployment = default.get("Deployment", "platform-gateway")
    assert env_value(deployment, "GATEWAY_ROUTES_FILE") == f"{MOUNT}/routes.yaml"
    mount = next(m for m in container(deployment)["volumeMounts"] if m["mountPath"] == MOUNT)
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "platform-gateway-routes"
    assert "routes.yaml" in default.get("ConfigMap", "platform-gateway-routes")["data"]


def test_the_checksum_is_the_sha256_of_the_table(default: Manifests) -> None:
    text = routes_text(default)
    assert checksum(default) == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()


def test_changing_a_route_changes_the_checksum(render: Renderer, default: Manifests) -> None:
    changed = render(
        gateway__extraRoutes=[{"name": "b", "prefix": "/b", "upstream": "http://b.default"}]
    )
    assert checksum(changed) != checksum(default)
    retimed = render(
        gateway__routes=[{"name": "mock", "prefix": "/mock", "upstream": "http://x", "timeout": {}}]
    )
    assert checksum(retimed) not in (checksum(default), checksum(changed))


def test_other_values_leave_the_checksum_alone(render: Renderer, default: Manifests) -> None:
    assert checksum(render(gateway__workers=4, gateway__logLevel="debug")) == checksum(default)


def test_extra_routes_are_appended(all_features: Manifests, tmp_path: Path) -> None:
    table = load(routes_text(all_features, "demo"), tmp_path)
    assert [r.name for r in table.routes][-1] == "billing"
    assert table.routes[-1].upstream == "http://billing.payments.svc.cluster.local"
    assert len(table.routes) == 5


def test_environment_references_survive_for_the_gateway_to_expand(
    render: Renderer, tmp_path: Path
) -> None:
    manifests = render(
        gateway__extraRoutes=[
            {"name": "ext", "prefix": "/ext", "upstream": "${EXT_UPSTREAM:-http://ext.default}"}
        ]
    )
    text = routes_text(manifests)
    assert "${EXT_UPSTREAM:-http://ext.default}" in text
    table = load(text, tmp_path, environ={"EXT_UPSTREAM": "http://ext.other"})
    assert table.routes[-1].upstream == "http://ext.other"


def test_routes_to_a_disabled_mock_are_refused(render: Renderer) -> None:
    error = render.error(downstreamMock__enabled=False)
    assert "downstreamMock.enabled is false" in error


def test_without_the_mock_your_own_routes_render_and_no_mock_is_left(render: Renderer) -> None:
    manifests = render(
        downstreamMock__enabled=False,
        gateway__routes=[{"name": "api", "prefix": "/api", "upstream": "http://api.default"}],
    )
    assert not [d for d in manifests if "downstream-mock" in d["metadata"]["name"]], (
        manifests.names()
    )
    assert "http://api.default" in routes_text(manifests)
    # The helm test then checks /readyz only.
    script = container(manifests.get("Pod", "platform-test-gateway"))["args"][0]
    assert "/readyz" in script
    assert "/mock/echo" not in script


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([], "refuses to start without a route"),
        # The schema already says so, before any template runs.
        ([{"name": "a", "prefix": "/a"}], "upstream"),
        (
            [{"name": "a", "prefix": "", "upstream": "http://a"}],
            "needs a name, a prefix and an upstream",
        ),
        (
            [
                {"name": "a", "prefix": "/a", "upstream": "http://a"},
                {"name": "a", "prefix": "/b", "upstream": "http://b"},
            ],
            'route name "a" is used twice',
        ),
    ],
)
def test_bad_tables_are_refused_at_render_time(
    render: Renderer, routes: list[dict[str, str]], message: str
) -> None:
    assert message in render.error(gateway__routes=routes)


def test_a_table_the_gateway_would_refuse_is_caught_here_too(
    render: Renderer, tmp_path: Path
) -> None:
    """What the chart cannot see (a bad timeout), the gateway's own loader refuses: the
    reason this suite loads every rendered table with it."""
    manifests = render(
        gateway__routes=[
            {"name": "a", "prefix": "/a", "upstream": "http://a", "timeout": {"total": -1}}
        ]
    )
    with pytest.raises(RouteTableError, match=r"timeout\.total"):
        load(routes_text(manifests), tmp_path)
