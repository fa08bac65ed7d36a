"""The ledger benchmark runs in its ``--quick`` mode, so the script cannot rot unnoticed.

It checks shape and correctness, not speed: every signature, proof and entry the benchmark claims
to have verified must be counted, and every rate must be compared with its floor.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ledger.py"
_TIMEOUT_S = 60
# The --quick sizes in benchmarks/ledger.py.
_APPENDS, _TREE_LEAVES, _PROOFS, _AUDIT = 2_000, 10_000, 500, 5_000


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"ledger.py --quick failed:\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_ledger_benchmark_says_it_is_in_memory(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "ledger"
    assert report["quick"] is True
    assert "in-memory" in report["scope"]
    assert report["machine"]["cpus"] >= 1


def test_ledger_benchmark_compares_appends_with_their_floor(report: dict[str, Any]) -> None:
    appends = report["appends"]
    for mode in ("one_at_a_time", "batched"):
        assert appends[mode]["entries"] == _APPENDS
        assert appends[mode]["per_s"] > 0
        assert appends[mode]["ratio_to_floor"] > 0
    assert appends["floor_per_s"] > 0
    assert report["floors"]["ed25519_verifications_per_s"] > 0
    assert report["floors"]["sha256_leaf_hashes_per_s"] > 0
    assert isinstance(appends["meets_target"], bool)


def test_ledger_benchmark_verifies_every_proof_it_generates(report: dict[str, Any]) -> None:
    proofs = report["proofs"]
    assert proofs["tree_leaves"] == _TREE_LEAVES
    for kind in ("inclusion", "consistency"):
        assert proofs[kind]["proofs"] == proofs[kind]["verified"] == _PROOFS
        assert proofs[kind]["generated_per_s"] > 0
        assert proofs[kind]["verify_ratio_to_floor"] > 0


def test_ledger_benchmark_audits_every_entry_of_the_log(report: dict[str, Any]) -> None:
    audit = report["audit"]
    assert audit["entries"] == _AUDIT
    assert audit["signatures_verified_parallel"] == _AUDIT
    assert audit["entries_replayed"] == _AUDIT
    assert audit["root_matches"] is True
    assert audit["invariants_hold"] is True
    assert audit["total_s"] == pytest.approx(
        audit["a_parallel_verify_s"] + audit["b_sequential_replay_s"], abs=0.01
    )
    assert audit["floor_s"] > 0
    assert audit["ratio_to_floor"] > 0
    assert report["log_generation"]["entries"] == _AUDIT
