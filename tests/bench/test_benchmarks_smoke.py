"""The benchmarks run in their tiny ``--quick`` mode, so the scripts cannot rot unnoticed.

The three scripts start at once (most of their time is spent waiting on servers) and each test
checks the JSON its script printed: the numbers are present, positive and compared to a baseline.
They check shape, not speed: these runs share the machine with each other and with other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = ("dispatch", "throughput", "scale")
_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=_TIMEOUT_S)
            assert proc.returncode == 0, f"{name}.py --quick failed:\n{err[-4000:]}"
            results[name] = json.loads(out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def test_dispatch_benchmark_reports_latency_against_round_trip_baselines(
    reports: dict[str, dict[str, Any]],
) -> None:
    report = reports["dispatch"]
    assert report["benchmark"] == "dispatch"
    assert report["dispatch"]["n"] == 10
    assert 0 < report["dispatch"]["median_ms"] <= report["dispatch"]["p99_ms"]
    assert report["baseline_hub_health_round_trip"]["median_ms"] > 0
    assert report["baseline_bare_fastapi_round_trip"]["median_ms"] > 0
    assert report["ratio_median_to_hub_health"] > 0
    assert isinstance(report["meets_target"], bool)
    assert report["machine"]["cpus"] >= 1


def test_throughput_benchmark_drains_every_task_and_compares_to_bare_fastapi(
    reports: dict[str, dict[str, Any]],
) -> None:
    report = reports["throughput"]
    assert report["settings"]["tasks"] == 100
    bare = report["baseline_bare_fastapi"]
    assert bare["requests"] == 300
    assert bare["requests_per_s"] > 0
    sqlite = report["hub"]["sqlite"]
    assert sqlite["tasks_completed"] == 100
    assert sqlite["all_jobs_succeeded"] is True
    assert sqlite["errors"] == 0, sqlite["first_errors"]
    assert sqlite["tasks_per_s"] > 0
    assert sqlite["ratio_to_bare"] > 0
    postgres = report["hub"]["postgres"]
    # PostgreSQL may be absent on a developer's machine; then the report says why.
    assert "skipped" in postgres or postgres["all_jobs_succeeded"] is True


def test_scale_benchmark_reports_heartbeat_latency_and_hub_cpu(
    reports: dict[str, dict[str, Any]],
) -> None:
    report = reports["scale"]
    assert report["settings"]["nodes"] == 50
    for side in ("hub", "baseline_bare_fastapi"):
        result = report[side]
        # 50 nodes, one heartbeat each per 5 s interval, for 10 s: two rounds.
        assert result["heartbeats"] == 100, side
        assert result["errors"] == 0, side
        assert result["latency"]["p99_ms"] > 0, side
        assert result["server_cpu_s_per_wall_s"] > 0, side
    assert report["ratio_p99_to_bare"] > 0
