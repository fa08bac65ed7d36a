"""Per-task cgroups: found only where the node may write them, and each task held in its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lumbung.node.cgroup import Cgroups, TaskLimits, find_cgroups


def _hierarchy(root: Path, controllers: str, own: str = "/") -> tuple[Path, Path]:
    """A cgroup v2 tree as files (the kernel's interface is files), and this process's place."""
    mount = root / "cgroup"
    base = mount / own.lstrip("/")
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text(controllers + "\n")
    (base / "cgroup.subtree_control").write_text("")
    (base / "cgroup.procs").write_text("")
    mountinfo = root / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw\n"
    )
    own_file = root / "own"
    own_file.write_text(f"4:memory:/elsewhere\n0::{own}\n")
    return mountinfo, own_file


def test_a_delegated_cgroup_with_memory_and_pids_is_used(tmp_path: Path) -> None:
    mountinfo, own = _hierarchy(tmp_path, "cpu memory pids io")
    cgroups, why = find_cgroups(mountinfo, own)
    assert cgroups is not None, why
    assert cgroups.controllers == ("memory", "pids", "cpu")
    assert (cgroups.base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"

    task = cgroups.create("task-1", TaskLimits(memory_bytes=2**30, max_processes=64, cpus=2))

    assert (task / "memory.max").read_text() == str(2**30)
    assert (task / "pids.max").read_text() == "64"
    assert (task / "cpu.max").read_text() == "200000 100000"


def test_without_the_controllers_the_node_says_why(tmp_path: Path) -> None:
    mountinfo, own = _hierarchy(tmp_path, "hugetlb")
    cgroups, why = find_cgroups(mountinfo, own)
    assert cgroups is None
    assert "no memory, pids controller" in why


def test_without_a_cgroup_v2_mount_the_node_says_why(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    cgroups, why = find_cgroups(mountinfo, tmp_path / "own")
    assert (cgroups, why) == (None, "no cgroup v2 hierarchy is mounted")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file: a check for other users")
def test_a_cgroup_the_node_may_not_write_is_not_used(tmp_path: Path) -> None:
    mountinfo, own = _hierarchy(tmp_path, "memory pids", own="/system.slice/x")
    base = tmp_path / "cgroup" / "system.slice" / "x"
    (base / "cgroup.subtree_control").chmod(0o444)
    base.chmod(0o555)
    try:
        cgroups, why = find_cgroups(mountinfo, own)
    finally:
        base.chmod(0o755)
    assert cgroups is None
    assert "not writable" in why


def test_this_machines_cgroups_hold_a_tasks_processes(
    sandbox_runner: object, tmp_path: Path
) -> None:
    cgroups, why = find_cgroups()
    if cgroups is None:
        pytest.skip(f"no delegated cgroup v2 here: {why}")
    path = cgroups.create("task-probe", TaskLimits(memory_bytes=None, max_processes=8, cpus=1))
    try:
        assert (path / "pids.max").read_text().strip() == "8"
    finally:
        Cgroups.remove(path)
    assert not path.exists()
