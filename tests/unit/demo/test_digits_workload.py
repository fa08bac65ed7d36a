"""The demo workload, run as the node runs it: a subprocess with the LUMBUNG_* environment."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

SCRIPT = Path(str(files("lumbung.demo") / "digits_sweep.py"))


def run_sweep(workdir: Path, params: dict[str, object]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LUMBUNG_PARAMS": json.dumps({"epoch_sleep_s": 0, **params}),
        "LUMBUNG_CHECKPOINT_DIR": str(workdir / "checkpoint"),
        "LUMBUNG_PROGRESS_FILE": str(workdir / "progress"),
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_sensible_config_learns_digits_and_writes_result(tmp_path: Path) -> None:
    run = run_sweep(tmp_path, {"hidden": 64, "lr": 0.01, "epochs": 20})

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["test_accuracy"] > 0.9
    assert result["epochs"] == 20
    assert result["resumed_from_epoch"] == 0
    assert result["params"]["hidden"] == 64
    assert "resumed" not in run.stdout
    assert sum(line.startswith("epoch ") for line in run.stdout.splitlines()) == 20
    assert float((tmp_path / "progress").read_text()) == 1.0
    state = pickle.loads((tmp_path / "checkpoint" / "state.pkl").read_bytes())  # noqa: S301
    assert state["epoch"] == 20
    assert len(state["history"]) == 20


def test_second_run_resumes_from_the_checkpoint_epoch(tmp_path: Path) -> None:
    run_sweep(tmp_path, {"hidden": 32, "lr": 0.01, "epochs": 5})

    run = run_sweep(tmp_path, {"hidden": 32, "lr": 0.01, "epochs": 8})

    assert "resumed at epoch 5" in run.stdout
    epochs_run = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs_run == ["6/8", "7/8", "8/8"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["resumed_from_epoch"] == 5
    state = pickle.loads((tmp_path / "checkpoint" / "state.pkl").read_bytes())  # noqa: S301
    assert [h["epoch"] for h in state["history"]] == list(range(1, 9))


def test_unknown_parameter_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "LUMBUNG_PARAMS": json.dumps({"hiden": 64})}
    run = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "hiden" in run.stderr
    assert not (tmp_path / "result.json").exists()
