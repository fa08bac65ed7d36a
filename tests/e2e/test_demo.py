"""``lumbung demo`` as a user runs it: real processes, a node killed, and the ledger settled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_the_demo_resumes_the_killed_task_and_settles_every_credit() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMBUNG_")}
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [sys.executable, "-m", "lumbung", "demo", "--tasks", "3"],
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
    assert "Ledger verified" in out and "Settlement (from the ledger)" in out
    assert "refunded" in out
