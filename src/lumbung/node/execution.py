"""The execution class a node reports with a result (``lumbung.wire.commitment.ExecutionClass``).

It names what decides a task's floating-point results bit for bit: the device and its model,
the platform, the Python, torch and numpy versions the task's interpreter has, the threads it
was given and whether Python's hash seed was fixed. Versions are read from the installed
packages' metadata: importing torch only to ask would cost the node seconds per task.
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path

from lumbung.wire.api import Assignment, Inventory
from lumbung.wire.commitment import ExecutionClass

HASH_SEED = "0"  # the task's PYTHONHASHSEED (lumbung.node.sandbox.scrubbed_env)
_CPUINFO = Path("/proc/cpuinfo")


def execution_class(assignment: Assignment, inventory: Inventory) -> ExecutionClass:
    gpus = assignment.resources.gpus
    if gpus and inventory.gpus:
        device, model = "cuda", inventory.gpus[0].model
    else:
        device, model = "cpu", cpu_model()
    env = assignment.env
    threads = env.get("OMP_NUM_THREADS", str(max(1, assignment.resources.cpus)))
    return ExecutionClass(
        device=device,
        device_model=model[:200],
        platform=f"{platform.system()}-{platform.machine()}",
        python=platform.python_version(),
        torch=_version("torch"),
        numpy=_version("numpy"),
        threads=int(threads) if threads.isdigit() and 0 < int(threads) <= 4096 else 1,
        deterministic=env.get("PYTHONHASHSEED", HASH_SEED) == HASH_SEED,
    )


@functools.cache
def cpu_model() -> str:
    """The CPU's model name as the kernel reports it, else the machine type."""
    try:
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
