"""`bench/run.py --smoke` still works end to end: every path measured, every field sane.

Not a performance test: the numbers of a 1-second run on a shared machine say little,
so the budget is reported, never asserted here. What it guards is that the benchmark
keeps starting, driving and stopping everything, and keeps measuring what it claims.
Needs wrk and nginx (`make bench-smoke` installs them); without them it fails with
the install command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent
RUN_TIMEOUT = 120
TARGETS = {
    "direct",
    "nginx",
    "gateway",
    "gateway+tracing",
    "fastapi-httpx",
    "fastapi-httpx-nosniffio",
}
BODIES = {100, 64 * 1024}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return data


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_every_path_and_body_was_driven(report: dict[str, Any]) -> None:
    seen = {(r["target"], r["body_bytes"]) for r in report["results"]}
    assert seen == {(t, b) for t in TARGETS for b in BODIES}
    for r in report["results"]:
        where = f"{r['target']} {r['body']}"
        assert r["rps"] > 0, where
        assert r["requests"] > 0, where
        assert r["errors"] == 0, where
        assert r["problems"] == [], where
        assert 0 < r["p50_ms"] <= r["p99_ms"], where
        assert r["bytes_per_request"] >= r["body_bytes"], where
        assert r["mock_cpu_us_per_request"] > 0, where
        assert r["share_of_direct"] > 0, where
        assert len(r["runs"]) == report["meta"]["repeat"] == 1, where


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_proxy_columns_are_measured_for_proxies_only(report: dict[str, Any]) -> None:
    for r in report["results"]:
        where = f"{r['target']} {r['body']}"
        if r["target"] == "direct":
            assert r["share_of_direct"] == 1.0, where
            assert r["proxy_cpu_us_per_request"] is None, where
            assert r["proxy_peak_rss_mib"] is None, where
        else:
            # A proxy that spent less than 5 us or more than 100 ms of CPU per request,
            # or fits in under 1 MiB, was not the process we measured.
            assert 5 < r["proxy_cpu_us_per_request"] < 100_000, where
            assert 1 < r["proxy_peak_rss_mib"] < 4096, where


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_streaming_checks_moved_every_byte(report: dict[str, Any]) -> None:
    assert len(report["streams"]) == 3
    for s in report["streams"]:
        assert s["ok"], s["detail"]
        assert s["size"] == 100 * 1024 * 1024
        assert 0 < s["rss_before"] <= s["rss_peak"], s
        assert s["rss_growth"] == s["rss_peak"] - s["rss_before"]


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_budget_is_reported(report: dict[str, Any]) -> None:
    names = {c["name"] for c in report["budget"]}
    assert "gateway CPU per small request" in names
    assert "gateway req/s over FastAPI + httpx" in names
    for check in report["budget"]:
        assert isinstance(check["ok"], bool)
        assert check["value"] is not None, check["name"]
    assert "gateway CPU per small request, tracing on" in names
    assert report["skipped"] == []
    assert report["meta"]["otlp_sink"]["exports"] > 0, "the traced gateway exported nothing"
