"""What a task is given to run with: its argv, limits and the ``LUMBUNG_*`` environment contract.

The environment is the whole interface between a node and the code it runs (README: "A task runs
in a fresh working directory with a scrubbed environment that holds ..."): ``LUMBUNG_TASK_ID``,
``LUMBUNG_JOB_ID``, ``LUMBUNG_ATTEMPT``, ``LUMBUNG_PARAMS`` (JSON) and ``LUMBUNG_PARAM_<NAME>``
per parameter, ``LUMBUNG_INPUTS_DIR``, ``LUMBUNG_CHECKPOINT_DIR``, ``LUMBUNG_PROGRESS_FILE``, and
for a train worker ``LUMBUNG_TRAIN_SPEC``, ``LUMBUNG_TRAIN_DIR`` and its dataset's variable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lumbung.node.sandbox import SandboxSpec, scrubbed_env
from lumbung.node.workdir import WorkDir
from lumbung.wire.api import Assignment

_GIB = 1024**3
# Address space granted beyond the task's memory: shared libraries and thread stacks are mapped
# (counted by RLIMIT_AS) long before they are resident, and the spec's memory_gb means resident.
_ADDRESS_SPACE_HEADROOM_BYTES = 1 * _GIB


@dataclass(frozen=True)
class Dataset:
    """A train worker's dataset: the variable naming it, and the host file the sandbox shows."""

    env: dict[str, str] = field(default_factory=dict)
    read_only: tuple[Path, ...] = ()


def disk_budget_bytes(assignment: Assignment) -> int:
    return max(1, int(assignment.resources.disk_gb * _GIB))


def sandbox_spec(
    a: Assignment, workdir: WorkDir, gpus: tuple[int, ...], dataset: Dataset
) -> SandboxSpec:
    cpus = a.resources.cpus
    memory_bytes = int(a.resources.memory_gb * _GIB)
    training = a.kind == "train"
    if training:
        # The sandboxed half of a DiLoCo worker; the node's courier thread talks to the hub.
        argv = [sys.executable, "-m", "lumbung.train.trainer"]
    else:
        argv = a.command or [sys.executable, "-m", "lumbung.node.entry", str(a.entrypoint)]
    return SandboxSpec(
        argv=list(argv),
        workdir=workdir.root,
        env=scrubbed_env(task_env(a, workdir, gpus, dataset), workdir.root, cpus=cpus),
        network=a.network,
        cpus=cpus,
        # CUDA, and torch on the CPU, reserve far more address space than they use, so GPU and
        # training tasks get no RLIMIT_AS (a cgroup holds their resident memory, if there is one).
        memory_bytes=None if gpus or training else memory_bytes + _ADDRESS_SPACE_HEADROOM_BYTES,
        disk_bytes=disk_budget_bytes(a),
        max_runtime_s=a.max_runtime_s,
        resident_bytes=memory_bytes + _ADDRESS_SPACE_HEADROOM_BYTES,
        read_only=(workdir.inputs, *dataset.read_only),
        gpus=gpus,
    )


def task_env(
    a: Assignment, workdir: WorkDir, gpus: tuple[int, ...], dataset: Dataset
) -> dict[str, str]:
    env = dict(a.env)
    # Empty for CPU tasks: a task sees only the GPUs the node handed it.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
    env.update(
        LUMBUNG_TASK_ID=a.task_id,
        LUMBUNG_JOB_ID=a.job_id,
        LUMBUNG_ATTEMPT=str(a.attempt),
        LUMBUNG_CHECKPOINT_DIR=str(workdir.checkpoint),
        LUMBUNG_PROGRESS_FILE=str(workdir.progress_file),
        LUMBUNG_INPUTS_DIR=str(workdir.inputs),
        LUMBUNG_PARAMS=json.dumps(a.params, sort_keys=True),
    )
    for name, value in a.params.items():
        env[f"LUMBUNG_PARAM_{name.upper()}"] = (
            value if isinstance(value, str) else json.dumps(value)
        )
    if a.kind == "train" and a.train is not None:
        env.update(
            LUMBUNG_TRAIN_SPEC=a.train.model_dump_json(),
            LUMBUNG_TRAIN_DIR=str(workdir.rounds),
            **dataset.env,
        )
    return env
