"""One point of a hyper-parameter sweep: an MLP on scikit-learn's 8x8 digits, resumable.

Run inside a task's sandbox as ``python digits_sweep.py``. The node tells it where things go:

- ``LUMBUNG_PARAMS``: this task's parameters as JSON, e.g. ``{"hidden": 64, "lr": 0.01}``;
- ``LUMBUNG_CHECKPOINT_DIR``: whatever is here is uploaded as the task's checkpoint and restored
  into the same place when the task resumes on another node;
- ``LUMBUNG_PROGRESS_FILE``: the fraction done, reported with each heartbeat.

It trains one epoch at a time with ``partial_fit`` and checkpoints after each, so a task killed
mid-run loses at most one epoch (plus whatever the node had not uploaded yet).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

# The split and the initial weights are fixed, so a resumed run is the same experiment.
SEED = 0
DEFAULTS: dict[str, Any] = {
    "hidden": 64,
    "lr": 0.01,
    "alpha": 0.0001,
    "epochs": 40,
    "batch_size": 64,
    # Training on digits takes milliseconds per epoch: far too quick to kill a task mid-run in a
    # demo. This sleep stretches each epoch so there is something to interrupt and resume.
    "epoch_sleep_s": 0.25,
}


def read_params() -> dict[str, Any]:
    raw = os.environ.get("LUMBUNG_PARAMS", "{}")
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"LUMBUNG_PARAMS is not JSON: {exc}") from exc
    if not isinstance(given, dict):
        raise SystemExit("LUMBUNG_PARAMS must be a JSON object")
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"unknown parameters: {sorted(unknown)}")
    return {**DEFAULTS, **given}


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    # Pixels are 0..16; scaled to 0..1 so that one learning rate suits every hidden size.
    x = digits.data / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=SEED, stratify=digits.target
    )
    return x_train, x_test, y_train, y_test


def new_model(params: dict[str, Any]) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=(int(params["hidden"]),),
        learning_rate_init=float(params["lr"]),
        alpha=float(params["alpha"]),
        batch_size=int(params["batch_size"]),
        random_state=SEED,
    )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: the node may copy the directory at any moment, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_progress(path: Path | None, fraction: float) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{fraction:.4f}\n")
    os.replace(tmp, path)


def main() -> int:
    params = read_params()
    epochs = int(params["epochs"])
    checkpoint = Path(os.environ.get("LUMBUNG_CHECKPOINT_DIR", "checkpoint")) / "state.pkl"
    progress_env = os.environ.get("LUMBUNG_PROGRESS_FILE")
    progress_file = Path(progress_env) if progress_env else None
    x_train, x_test, y_train, y_test = load_data()
    classes = np.unique(y_train)

    start_epoch = 0
    history: list[dict[str, float]] = []
    model = new_model(params)
    if checkpoint.is_file():
        with checkpoint.open("rb") as f:
            state = pickle.load(f)  # noqa: S301 - its own checkpoint, in its own sandbox
        start_epoch, model, history = state["epoch"], state["model"], state["history"]
        print(f"resumed at epoch {start_epoch}", flush=True)

    for epoch in range(start_epoch + 1, epochs + 1):
        model.partial_fit(x_train, y_train, classes=classes)
        accuracy = float(model.score(x_test, y_test))
        history.append({"epoch": epoch, "loss": float(model.loss_), "test_accuracy": accuracy})
        print(
            f"epoch {epoch}/{epochs} loss {model.loss_:.4f} test_accuracy {accuracy:.4f}",
            flush=True,
        )
        save_checkpoint(checkpoint, {"epoch": epoch, "model": model, "history": history})
        write_progress(progress_file, epoch / epochs)
        time.sleep(float(params["epoch_sleep_s"]))

    result = {
        "params": params,
        "test_accuracy": float(model.score(x_test, y_test)),
        "epochs": epochs,
        "resumed_from_epoch": start_epoch,
    }
    Path("result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"done: test_accuracy {result['test_accuracy']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
