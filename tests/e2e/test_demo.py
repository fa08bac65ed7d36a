"""``lumbung demo`` as a user runs it: real processes, a node killed, and the ledger settled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Training saturates the CPU: these run one after another on one worker (make test's
# --dist loadgroup), beside the lighter end-to-end tests, never beside each other.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("training")]


def test_the_demo_resumes_the_killed_task_and_settles_every_credit() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMBUNG_")}
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [sys.executable, "-m", "lumbung", "demo", "--sweep", "--tasks", "3"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    out = done.stdout + done.stderr
    # Exit 0 means: the job succeeded, the killed task resumed from a checkpoint, its escrow
    # settled to the last micro-credit, and the audit of the ledger passed.
    assert done.returncode == 0, out
    assert "resumed from its checkpoint" in out
    assert "Ledger verified" in out
    assert "Settlement (from the ledger)" in out
    assert "refunded" in out


def test_the_training_demo_survives_a_killed_worker_and_writes_text() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMBUNG_")}
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [sys.executable, "-m", "lumbung", "demo"],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        check=False,
    )
    out = done.stdout + done.stderr
    # Exit 0 means: the job succeeded, the killed worker shrank a round, the model wrote text,
    # and the escrow settled and the ledger's audit passed.
    assert done.returncode == 0, out
    assert "killed in round" in out
    assert "The model writes:" in out
    assert "data parallelism would have sent" in out
    assert "Ledger verified" in out
