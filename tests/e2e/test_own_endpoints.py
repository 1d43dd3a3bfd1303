"""The gateway's own endpoints: probes, health, the index, metrics and its documented API.

Kubelets, load balancers, Prometheus and humans rely on these answering the same
everywhere; the OpenAPI document is the gateway's published contract (every operation
named, summarised on one line, described briefly), and metrics are labelled by route,
never by the raw path a client chose.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from .support import media_type


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_probes_answer_200(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers.get("x-request-id")


def test_health_is_ok(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    assert media_type(response) == "application/json"
    assert response.json() == {"status": "ok"}


def test_index_names_the_gateway_and_its_routes(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200, response.text
    assert media_type(response) == "application/json"
    body = response.json()
    assert {"name", "version", "routes"} <= body.keys(), body
    for key in ("name", "version"):
        assert isinstance(body[key], str), body
        assert body[key], body
    assert "/mock" in str(body["routes"]), body["routes"]


def test_openapi_documents_every_operation(client: httpx.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document.get("openapi", "").startswith("3."), document.get("openapi")
    operations = [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    ]
    paths = {path for _, path, _ in operations}
    assert {"/livez", "/readyz", "/health"} <= paths, sorted(paths)

    problems = []
    operation_ids = []
    for method, path, operation in operations:
        where = f"{method} {path}"
        operation_id = operation.get("operationId")
        summary = operation.get("summary", "")
        description = operation.get("description", "")
        if not operation_id:
            problems.append(f"{where}: no operationId")
        operation_ids.append(operation_id)
        if not summary.strip() or "\n" in summary.strip():
            problems.append(f"{where}: summary is not one line: {summary!r}")
        if not description.strip():
            problems.append(f"{where}: no description")
        elif len(description) > 300:
            problems.append(f"{where}: description has {len(description)} characters (> 300)")
    duplicates = {i for i in operation_ids if i and operation_ids.count(i) > 1}
    assert not duplicates, f"operationIds used more than once: {sorted(duplicates)}"
    assert not problems, "\n".join(problems)


def test_docs_serve_html(client: httpx.Client) -> None:
    response = client.get("/docs")
    assert response.status_code == 200, response.text[:500]
    assert media_type(response) == "text/html"
    assert "openapi.json" in response.text


def test_metrics_are_prometheus_text(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text[:500]
    assert media_type(response) == "text/plain", response.headers.get("content-type")
    assert "# TYPE " in response.text


def test_metrics_never_label_by_raw_path(client: httpx.Client) -> None:
    marker = uuid.uuid4().hex
    client.get(f"/mock/echo/{marker}")
    client.get(f"/no-route-{marker}")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200, metrics.text[:500]
    assert marker not in metrics.text, "a raw request path became a metric label"
