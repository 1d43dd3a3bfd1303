"""Errors: the ones the gateway makes, and the upstream's, which it must not touch.

Guards that the gateway answers problem+json for no route (404), an unreachable upstream
(502) and a slow one (504, within the route's total timeout), and that an upstream's own
4xx/5xx, body and content-type included, reach the client exactly as the mock sent them.
"""

from __future__ import annotations

import time

import httpx
import pytest

from .support import assert_problem, media_type, problem_type

# Timeouts of the `strict` and `unreachable` routes in routes.yaml, plus slack for a
# loaded CI machine.
STRICT_TOTAL_SECONDS = 2.0
SLACK_SECONDS = 1.5


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_unknown_route_is_404_problem(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/no/such/route")
    body = assert_problem(response, 404)
    assert body["type"] != problem_type("requested-status"), "the mock answered this"


@pytest.mark.parametrize("code", [400, 404, 418, 429, 500, 503, 504])
def test_upstream_error_passes_through_unchanged(client: httpx.Client, code: int) -> None:
    response = client.get(f"/mock/status/{code}")
    # The mock's problem type proves the body is the mock's, not one the gateway made.
    body = assert_problem(response, code, "requested-status")
    assert body["detail"] == f"answered {code} because it was asked to", body
    assert int(response.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize("code", [200, 201, 299])
def test_upstream_success_passes_through_unchanged(client: httpx.Client, code: int) -> None:
    response = client.get(f"/mock/status/{code}")
    assert response.status_code == code
    assert media_type(response) == "application/json"
    assert response.json()["status"] == code


def test_upstream_empty_204_passes_through(client: httpx.Client) -> None:
    response = client.delete("/mock/status/204")
    assert response.status_code == 204
    assert response.content == b""


def test_unreachable_upstream_is_502_problem(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.get("/unreachable/x", timeout=httpx.Timeout(10.0))
    elapsed = time.monotonic() - started
    assert_problem(response, 502, "upstream-unreachable")
    assert elapsed < STRICT_TOTAL_SECONDS + SLACK_SECONDS, f"took {elapsed:.2f} s"


def test_slow_upstream_is_504_problem_within_the_route_timeout(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.get("/strict/delay/5", timeout=httpx.Timeout(10.0))
    elapsed = time.monotonic() - started
    assert_problem(response, 504, "upstream-timeout")
    assert elapsed < STRICT_TOTAL_SECONDS + SLACK_SECONDS, (
        f"504 after {elapsed:.2f} s; the route's total timeout is {STRICT_TOTAL_SECONDS} s"
    )


def test_upstream_within_the_route_timeout_answers(client: httpx.Client) -> None:
    response = client.get("/strict/delay/0.2", timeout=httpx.Timeout(10.0))
    assert response.status_code == 200, response.text
    assert response.json() == {"delayed_seconds": 0.2}
