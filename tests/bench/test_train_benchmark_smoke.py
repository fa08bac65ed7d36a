"""The DiLoCo benchmark runs in its ``--quick`` mode, so the script cannot rot unnoticed.

It checks shape and accounting, not the loss targets: the quick run is too short for them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diloco.py"
_TIMEOUT_S = 120
ARMS = {
    "one_worker",
    "data_parallel",
    "diloco_h10",
    "diloco_h10_int8",
    "diloco_h50",
    "diloco_h50_int8",
    "diloco_h50_int8_drop25",
}


def test_diloco_benchmark_reports_every_arm_against_data_parallelism() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"diloco.py --quick failed:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    assert report["benchmark"] == "diloco"
    assert report["quick"] is True
    arms = report["arms"]
    assert set(arms) == ARMS
    assert len({a["inner_steps_per_worker"] for a in arms.values()}) == 1
    assert arms["one_worker"]["bytes_up"] == arms["one_worker"]["bytes_down"] == 0
    assert arms["data_parallel"]["bytes_ratio_data_parallel_to_this"] == 1.0
    # fewer rounds and int8 both send less
    assert arms["diloco_h50"]["bytes_up"] < arms["diloco_h10"]["bytes_up"]
    assert arms["diloco_h50_int8"]["bytes_up"] < arms["diloco_h50"]["bytes_up"] / 3.5
    assert arms["diloco_h50_int8_drop25"]["updates_dropped"] > 0
    for arm in arms.values():
        assert 0 < arm["validation_loss"] < 10
    assert set(report["targets"])
    assert isinstance(report["meets_targets"], bool)
    assert report["sample_diloco_h50_int8"].startswith("ROMEO:")
