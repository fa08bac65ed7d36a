"""What this node offers: GPUs (through NVML), cores, memory, disk, software versions.

Nothing here imports torch or needs a GPU: a machine without an NVIDIA driver simply has no GPUs.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shutil
from pathlib import Path

from lumbung.config import NodeConfig
from lumbung.wire.api import GpuInfo, Inventory, Isolation

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


def collect_inventory(config: NodeConfig, isolation: Isolation) -> Inventory:
    torch = _torch_version()
    # Training runs lumbung.train.trainer in the task's sandbox beside the node's courier: it
    # needs torch here, and the process runner (a container image need not hold lumbung).
    trains = torch is not None and config.runner == "process"
    return Inventory(
        gpus=collect_gpus(),
        cpus=config.cpus or os.cpu_count() or 1,
        memory_mib=_memory_mib(),
        disk_free_mib=_disk_free_mib(config.data_dir),
        os=platform.platform(),
        python=platform.python_version(),
        torch=torch,
        isolation=isolation,
        kinds=["run", "train"] if trains else ["run"],
    )


def collect_gpus() -> list[GpuInfo]:
    """The NVIDIA GPUs NVML can see, in NVML index order; empty when there is no driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("no NVIDIA GPUs: %s", exc)
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    model=_text(pynvml.nvmlDeviceGetName(handle)) or "unknown NVIDIA GPU",
                    memory_mib=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // _MIB,
                    driver=driver,
                    cuda_capability=f"{major}.{minor}",
                )
            )
        return gpus
    except pynvml.NVMLError as exc:
        log.warning("NVML failed while listing GPUs, offering none: %s", exc)
        return []
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    # Older NVML bindings return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


def _memory_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024  # the value is in KiB
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // _MIB


def _disk_free_mib(data_dir: Path) -> int:
    # data_dir may not exist yet on a first start; measure the nearest directory that does.
    probe = data_dir.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free // _MIB


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
