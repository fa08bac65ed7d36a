"""What a task is given to run with: its argv, limits and environment.

The environment is the whole interface between a node and the code it runs; its names are
``lumbung.wire.task_env``'s and its values are pinned by docs/formats.md's golden vectors.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from lumbung.node.sandbox import SandboxSpec, scrubbed_env
from lumbung.node.workdir import WorkDir
from lumbung.wire import task_env as names
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
        {
            names.TASK_ID: a.task_id,
            names.JOB_ID: a.job_id,
            names.ATTEMPT: str(a.attempt),
            names.CHECKPOINT_DIR: str(workdir.checkpoint),
            names.PROGRESS_FILE: str(workdir.progress_file),
            names.INPUTS_DIR: str(workdir.inputs),
            names.PARAMS: names.params_json(a.params),
        }
    )
    for name, value in a.params.items():
        env[names.param_name(name)] = names.param_value(value)
    if a.kind == "train" and a.train is not None:
        env[names.TRAIN_SPEC] = a.train.model_dump_json()
        env[names.TRAIN_DIR] = str(workdir.rounds)
        env.update(dataset.env)
    return env
