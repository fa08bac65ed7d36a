"""The node's inventory: works without a GPU, and reads NVML where there is one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lumbung.config import NodeConfig
from lumbung.node.inventory import collect_gpus, collect_inventory
from lumbung.wire.api import Isolation


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


HAS_NVML = _nvml_works()


def test_inventory_describes_this_machine(tmp_path: Path) -> None:
    isolation = Isolation(network="netns")
    inventory = collect_inventory(NodeConfig(data_dir=tmp_path / "not-yet"), isolation)
    assert inventory.cpus == os.cpu_count()
    assert inventory.memory_mib > 0
    assert inventory.disk_free_mib > 0
    assert inventory.python.count(".") == 2
    assert inventory.os
    assert inventory.isolation == isolation


def test_configured_cpus_override_the_machine_count(tmp_path: Path) -> None:
    inventory = collect_inventory(NodeConfig(data_dir=tmp_path, cpus=3), Isolation())
    assert inventory.cpus == 3


@pytest.mark.skipif(HAS_NVML, reason="this machine has an NVIDIA driver")
def test_machine_without_nvidia_driver_offers_no_gpus(tmp_path: Path) -> None:
    assert collect_inventory(NodeConfig(data_dir=tmp_path), Isolation()).gpus == []


@pytest.mark.skipif(not HAS_NVML, reason="no NVIDIA GPU or driver")
def test_nvml_reports_each_gpu() -> None:
    gpus = collect_gpus()
    assert gpus
    for gpu in gpus:
        assert gpu.model
        assert gpu.memory_mib > 1024
        assert gpu.driver
        major, minor = gpu.cuda_capability.split(".")
        assert int(major) >= 3
        assert minor.isdigit()
