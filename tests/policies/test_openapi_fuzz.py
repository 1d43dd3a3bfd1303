"""Schemathesis against the running gateway: its own OpenAPI, and the proxy path.

1. The gateway's own document (probes, /metrics, the index) with schemathesis's whole
   engine: its coverage and fuzzing phases (the document has no examples and no links
   for the other two) and every check (no 5xx; status codes, content types, bodies and
   headers as documented; unsupported methods answered 405; ...). It runs as
   schemathesis's CLI in a subprocess: its pytest loader for a schema that exists only
   once a fixture has started the server (`schemathesis.pytest.from_fixture`) sets
   `Function._nodeid`, which pytest 9 no longer has, and fails before any request.
2. The mock's document, sent through the gateway's /open route: whatever a
   schema-valid request looks like, the answer has an X-Request-ID and is no 5xx other
   than the mock's deliberate ones (/status/5xx, /flaky, injected faults). An
   unexpected 5xx is a bug in the gateway or in the mock (the mock's log has the
   request id); this is how `GET /items?offset=2**63` (a 500 from SQLite in the mock)
   was found. The mock's schema does not document what the gateway refuses on purpose
   (400 bad-path for an encoded slash in a path parameter, say), so schemathesis's
   conformance checks are not applied here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings

try:
    import schemathesis
except ModuleNotFoundError as exc:  # pragma: no cover - an environment problem, said clearly
    raise ImportError(
        "tests/policies/test_openapi_fuzz.py needs schemathesis in the root dev group"
        " (uv add --dev schemathesis)"
    ) from exc

from .support import Stack

# Both runs draw their cases from this seed, so that a gate fails only for what a change
# did. To explore, change it locally: five random runs of the proxy test, 417 requests
# each, found nothing beyond the offset bug.
FUZZ_SEED = 20261125
OWN_MAX_EXAMPLES = 50
PROXY_MAX_EXAMPLES = 15
# Operations of the mock left out: /admin would change what other tests see, and /delay,
# /bytes and /stream take time or size from the generated numbers.
NOT_THROUGH_THE_PROXY = re.compile(r"^/(admin|delay|bytes|stream)(/|$)")
# The 5xx problems the mock makes on purpose; any other 5xx is a bug.
MOCK_5XX_TYPES = frozenset(
    f"urn:platform:problem:{slug}" for slug in ("requested-status", "flaky", "injected-fault")
)


def test_the_gateway_conforms_to_its_own_openapi(stack: Stack) -> None:
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(cli),
            "run",
            stack.gateway.url + "/openapi.json",
            f"--max-examples={OWN_MAX_EXAMPLES}",
            "--request-timeout=10",
            "--no-color",
            f"--seed={FUZZ_SEED}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(stack.workdir),
        },
        cwd=stack.workdir,
    )
    output = result.stdout + result.stderr
    cases = re.search(r"(\d+) generated", output)
    print(
        f"\nschemathesis on the gateway's own OpenAPI: {cases.group(0) if cases else output[-300:]}"
    )
    assert result.returncode == 0, output[-6000:]
    assert cases is not None, output[-2000:]
    assert int(cases.group(1)) > 0, output[-2000:]


def test_fuzzed_requests_through_the_proxy_get_no_unexpected_5xx(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(stack.mock.url + "/openapi.json", timeout=10)
    base_url = stack.gateway.url + "/open"
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if not NOT_THROUGH_THE_PROXY.match(operation.path):
            _fuzz_through_the_gateway(operation, base_url, sent)
    total = sum(sent.values())
    print(f"\nschemathesis through the proxy: {total} requests over {len(sent)} operations")
    assert len(sent) >= 10, sorted(sent)


def _fuzz_through_the_gateway(operation: Any, base_url: str, sent: dict[str, int]) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @seed(FUZZ_SEED)
    @given(case=operation.as_strategy())
    @settings(
        max_examples=PROXY_MAX_EXAMPLES,
        deadline=None,  # real processes on a shared machine: latency is not the property
        database=None,  # nothing to replay: the cases come from FUZZ_SEED
        suppress_health_check=list(HealthCheck),
    )
    def through_the_gateway(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=10)
        sent[label] = sent.get(label, 0) + 1
        described = f"{case.as_curl_command()} -> {response.status_code} {response.text[:300]}"
        request_id = _header(response, "x-request-id")
        assert request_id, f"no X-Request-ID: {described}"
        if response.status_code >= 500:
            assert _deliberate(operation.path, case, response), (
                f"an unexpected 5xx (request id {request_id}): {described}"
            )

    through_the_gateway()


def _header(response: Any, name: str) -> str | None:
    """A header of a schemathesis response, whose header values are lists."""
    values = response.headers.get(name) or [None]
    return values[0] if isinstance(values, list) else values


def _deliberate(path: str, case: Any, response: Any) -> bool:
    """Whether a 5xx is one the mock makes on purpose, passed through unchanged."""
    if case.method.upper() == "HEAD":
        # No body to read the problem type from: only the deliberate ones qualify.
        if path == "/status/{code}":
            return int(case.path_parameters["code"]) == response.status_code
        return path == "/flaky/{key}" and response.status_code == 503
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("type") in MOCK_5XX_TYPES
