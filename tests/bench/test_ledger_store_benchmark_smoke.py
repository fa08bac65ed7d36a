"""The stored-ledger benchmark runs in its ``--quick`` mode, so the script cannot rot unnoticed.

It checks shape and correctness, not speed: every rate is positive and compared with its floor,
every proof generated was verified, and ``lumbung ledger verify`` audited the whole stored log.
PostgreSQL is measured when reachable; otherwise the benchmark says why it skipped it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ledger_store.py"
_TIMEOUT_S = 120
# The --quick sizes in benchmarks/ledger_store.py.
_SINGLE, _BATCHED, _BIG_LOG, _PROOFS, _SINGLE_ON_BIG = 100, 2_000, 2_000, 200, 8


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"ledger_store.py --quick failed:\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_stored_ledger_benchmark_says_what_it_ran(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "ledger_store"
    assert report["quick"] is True
    assert "LogService" in report["scope"]
    assert report["floors"]["ed25519_verifications_per_s"] > 0
    assert report["floors"]["sha256_leaf_hashes_per_s"] > 0


def test_stored_appends_are_measured_against_their_floor(report: dict[str, Any]) -> None:
    appends = report["appends"]
    assert appends["floor_per_s"] > 0
    measured = [b for b in ("sqlite", "postgresql") if "skipped" not in appends[b]]
    assert "sqlite" in measured
    if "postgresql" not in measured:
        assert "PostgreSQL unreachable" in appends["postgresql"]["skipped"]
    for backend in measured:
        for mode, entries in (("one_at_a_time", _SINGLE), ("batched", _BATCHED)):
            part = appends[backend][mode]
            assert part["entries"] == entries
            assert part["per_s"] > 0
            assert part["ratio_to_floor"] > 0
        assert isinstance(appends[backend]["meets_target"], bool)


def test_proofs_from_the_stored_tree_are_all_verified(report: dict[str, Any]) -> None:
    big = report["big_log"]
    assert big["build"]["entries"] == _BIG_LOG
    assert big["build"]["per_s"] > 0
    assert big["proofs"]["tree_leaves"] == _BIG_LOG
    for kind in ("inclusion", "consistency"):
        part = big["proofs"][kind]
        assert part["proofs"] == part["verified"] == _PROOFS
        assert part["generated_per_s"] > 0
        assert part["verified_per_s"] > 0
        assert part["verify_ratio_to_floor"] > 0
    assert big["appends_on_big_log"]["entries"] == _SINGLE_ON_BIG
    assert big["appends_on_big_log"]["per_s"] > 0


def test_ledger_verify_audits_the_whole_stored_log_through_a_real_hub(
    report: dict[str, Any],
) -> None:
    audit = report["big_log"]["audit"]
    assert audit["entries"] == _BIG_LOG + _SINGLE_ON_BIG
    assert audit["verified"] is True
    assert audit["hub_start_s"] > 0
    assert audit["hub_start_floor_s"] > 0
    assert audit["total_s"] > 0
    assert audit["hub_cpu_s"] >= 0
    assert audit["floor_s"] > 0
    assert audit["ratio_to_floor"] > 0
    assert isinstance(audit["meets_target"], bool)
