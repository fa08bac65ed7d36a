"""Per-task cgroups (v2), where the node may make them: memory, process count and CPU share.

rlimits hold one process at a time (address space) or count in ways a task can game; a cgroup
holds the whole task. A node can use one when the cgroup v2 hierarchy is mounted, its own cgroup
is writable (a container's root, or a systemd unit with ``Delegate=yes``) and offers the memory
and pids controllers. Then each task gets ``<node's cgroup>/task-<id>`` with ``memory.max``,
``pids.max`` and ``cpu.max``; bubblewrap is moved into it before it starts anything, and the
cgroup is killed whole and removed when the task ends. Elsewhere the node says why not and the
sandbox's rlimits are all there is.

A cgroup with controllers enabled for its children may hold no processes itself (cgroup v2's
"no internal processes" rule), so a node whose own cgroup is not the hierarchy's root first moves
itself into a leaf of its own, ``<node's cgroup>/node``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_NEEDED = ("memory", "pids")
_WANTED = ("cpu",)
_CPU_PERIOD_US = 100_000
_REMOVE_WAIT_S = 2.0


@dataclass(frozen=True)
class TaskLimits:
    memory_bytes: int | None
    max_processes: int
    cpus: int


class Cgroups:
    """The node's delegated cgroup, under which every task gets one of its own."""

    def __init__(self, base: Path, controllers: tuple[str, ...]) -> None:
        self.base = base
        self.controllers = controllers

    def create(self, name: str, limits: TaskLimits) -> Path:
        path = self.base / name
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        _write(path / "pids.max", str(limits.max_processes))
        if limits.memory_bytes is not None:
            _write(path / "memory.max", str(limits.memory_bytes))
            # No swapping past the limit: what is over it is the task's problem, not the host's.
            with contextlib.suppress(OSError):
                _write(path / "memory.swap.max", "0")
        if "cpu" in self.controllers:
            _write(path / "cpu.max", f"{max(1, limits.cpus) * _CPU_PERIOD_US} {_CPU_PERIOD_US}")
        return path

    @staticmethod
    def enter(path: Path) -> None:
        """Move the calling process into ``path`` (from a child, between fork and exec)."""
        _write(path / "cgroup.procs", str(os.getpid()))

    @staticmethod
    def remove(path: Path) -> None:
        """Kill whatever is left in ``path`` and remove it."""
        with contextlib.suppress(OSError):
            _write(path / "cgroup.kill", "1")
        deadline = time.monotonic() + _REMOVE_WAIT_S
        while True:
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:  # EBUSY while the killed processes are still exiting
                if time.monotonic() > deadline:
                    log.warning("cannot remove cgroup %s: %s", path, exc)
                    return
                time.sleep(0.05)


def find_cgroups(
    mountinfo: Path = Path("/proc/self/mountinfo"), own: Path = Path("/proc/self/cgroup")
) -> tuple[Cgroups | None, str]:
    """The node's delegated cgroup if it can hold tasks' cgroups here, else why not."""
    mount = _cgroup2_mount(mountinfo)
    if mount is None:
        return None, "no cgroup v2 hierarchy is mounted"
    relative = _own_cgroup(own)
    if relative is None:
        return None, "this process is in no cgroup v2 cgroup"
    base = mount / relative.lstrip("/")
    available = _read(base / "cgroup.controllers").split()
    missing = [c for c in _NEEDED if c not in available]
    if missing:
        return None, f"cgroup v2 at {base} offers no {', '.join(missing)} controller"
    if not os.access(base, os.W_OK) or not os.access(base / "cgroup.subtree_control", os.W_OK):
        return None, f"cgroup v2 at {base} is not writable by the node (not delegated)"
    controllers = tuple(c for c in (*_NEEDED, *_WANTED) if c in available)
    try:
        _enable(base, controllers, is_root=relative == "/")
    except OSError as exc:
        return None, f"cannot enable {', '.join(controllers)} in {base}: {exc.strerror}"
    return Cgroups(base, controllers), ""


def _enable(base: Path, controllers: tuple[str, ...], *, is_root: bool) -> None:
    request = " ".join(f"+{c}" for c in controllers)
    try:
        _write(base / "cgroup.subtree_control", request)
    except OSError as exc:
        if exc.errno != errno.EBUSY or is_root:
            raise
        # The node's own processes are in ``base``: move them to a leaf, then enable.
        leaf = base / "node"
        with contextlib.suppress(FileExistsError):
            leaf.mkdir()
        for pid in _read(base / "cgroup.procs").split():
            with contextlib.suppress(ProcessLookupError, OSError):
                _write(leaf / "cgroup.procs", pid)
        _write(base / "cgroup.subtree_control", request)


def _cgroup2_mount(mountinfo: Path) -> Path | None:
    for line in _read(mountinfo).splitlines():
        # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPER_OPTIONS
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _own_cgroup(own: Path) -> str | None:
    for line in _read(own).splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
