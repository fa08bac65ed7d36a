"""Job specs for tests: one run job, one train job, each overridable field by field.

Every suite builds its specs here, as the hub receives them (``run_job``, ``train_job``: plain
dicts, so a test can also break them) or validated (``job``). A suite with constants of its own
(a price, a runtime) binds them with ``functools.partial``.
"""

from __future__ import annotations

import copy
from typing import Any

from lumbung.wire.spec import JobSpec

_RUN_JOB: dict[str, Any] = {
    "name": "t",
    "command": ["python", "-c", "print({x})"],
    "grid": {"x": [1]},
    "max_price_micro_per_hour": 50_000,
    "retries": 1,
    "outputs": [],
}

_TRAIN_JOB: dict[str, Any] = {
    "name": "lm",
    "kind": "train",
    "max_price_micro_per_hour": 1,
}


def run_job(**fields: Any) -> dict[str, Any]:
    """A one-task ``run`` job; ``fields`` replace the spec's top-level fields."""
    return {**copy.deepcopy(_RUN_JOB), **fields}


def train_job(train: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A ``train`` job: ``train`` is its train section as given (one round of the built-in model
    when left out), ``fields`` the spec's top-level fields."""
    section = {"rounds": 1} if train is None else train
    return {**copy.deepcopy(_TRAIN_JOB), "train": section, **fields}


def job(**fields: Any) -> JobSpec:
    """``run_job(**fields)``, validated as the hub validates a submission."""
    return JobSpec.model_validate(run_job(**fields))
