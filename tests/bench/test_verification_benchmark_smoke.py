"""``benchmarks/verification.py --quick`` runs, so the script cannot rot unnoticed.

It checks the report's shape and what must hold in any run, however small: a provider that always
lies is caught, unpaid and loses money, and no honest provider is slashed. The intermittent
cheat starts lying after 15 honest tasks, so 30 may not catch it; the catch rates and the
overhead targets need the full run (its numbers are in benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_verification_benchmark_catches_every_kind_and_slashes_no_honest_node() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "verification.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["benchmark"] == "verification"
    assert {(r["kind"], r["cheater_share"]) for r in report["scenarios"]} == {
        ("always", 0.1), ("always", 0.3), ("intermittent", 0.1), ("intermittent", 0.3),
    }  # fmt: skip
    for scenario in report["scenarios"]:
        assert scenario["honest_slashed"] == 0
        assert scenario["steady_state_overhead"] > 0
        if scenario["kind"] == "always":  # 30 tasks are enough to catch every blatant cheat
            assert scenario["made_up_results"] > 0
            assert scenario["never_caught"] == 0
            assert scenario["paid_for_made_up_micro"] == 0
            assert scenario["net_profit_from_cheating_micro"] < 0
    assert report["targets"]["no_honest_slashed"] is True
