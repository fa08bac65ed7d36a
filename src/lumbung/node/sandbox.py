"""What every runner shares (the task's spec, environment and process), and the weakest runner.

``ProcessRunner`` is isolation level "process": a process group with a scrubbed environment and
resource limits, and no network where the kernel lets it make a network namespace. It is hygiene,
not a boundary: the task runs as the node's user and sees the host's files as that user. A node
uses it only where bubblewrap cannot run and its provider said so explicitly
(``--allow-unsandboxed``); the sandbox proper is ``lumbung.node.bwrap``.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from lumbung.wire.api import Isolation

log = logging.getLogger(__name__)

# Commands tried in order to give a task a fresh, empty network namespace. Plain `unshare -n` needs
# CAP_SYS_ADMIN (a root node); `-r` maps the user to root inside a new user namespace first, which
# works unprivileged where the kernel allows user namespaces.
_UNSHARE_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("unshare", "-n", "--"),
    ("unshare", "-r", "-n", "--"),
)
_PROBE_TIMEOUT_S = 5.0
_OPEN_FILES_LIMIT = 1024
# Seconds of CPU time granted beyond max_runtime_s * cpus, so start-up is never what hits the limit.
_CPU_SLACK_S = 5


def probe_isolation(why_unsandboxed: str = "") -> Isolation:
    """The isolation ``ProcessRunner`` gives here: level "process", with a network namespace
    where ``unshare`` can make one (see ``network_prefix``)."""
    notes = [f"no sandbox: {why_unsandboxed}"] if why_unsandboxed else []
    notes.append("tasks run as the node's user and can read what it can read")
    prefix, reason = _find_unshare_prefix()
    if prefix is None:
        notes.append(f"tasks share the host network: unshare unavailable ({reason})")
        return Isolation(runner="process", level="process", network="none", notes=notes)
    notes.append(f"netns via {' '.join(prefix)}")
    return Isolation(runner="process", level="process", network="netns", notes=notes)


def _find_unshare_prefix() -> tuple[tuple[str, ...] | None, str]:
    reason = "no unshare command"
    for prefix in _UNSHARE_PREFIXES:
        try:
            done = subprocess.run(
                [*prefix, "true"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
            continue
        if done.returncode == 0:
            return prefix, ""
        reason = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
    return None, reason


def network_prefix(isolation: Isolation) -> tuple[str, ...]:
    """The argv prefix that puts a task in its own network namespace; empty when none works."""
    if isolation.network != "netns":
        return ()
    prefix, _ = _find_unshare_prefix()
    return prefix or ()


def scrubbed_env(extra: Mapping[str, str], workdir: Path, *, cpus: int = 1) -> dict[str, str]:
    """A task's whole environment: nothing of the node's own (its keys, tokens) leaks through.

    ``python`` on PATH is the node's own interpreter. The BLAS/OpenMP thread counts are pinned to
    the task's cores: each of their threads reserves address space (stacks, malloc arenas) and a
    library that starts one thread per machine core can exceed a small RLIMIT_AS before the task
    has allocated anything. ``extra`` is applied last and may override any of these.
    """
    threads = str(max(1, cpus))
    env = {
        "PATH": os.path.dirname(sys.executable) + ":/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        # A fixed hash seed, so that replicas of a task iterate sets in the same order
        # (lumbung.node.execution reports it in the result's execution class).
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    env.update(extra)
    return env


@dataclass(frozen=True)
class SandboxSpec:
    argv: list[str]
    workdir: Path
    # The complete environment of the task (see ``scrubbed_env``); the node's is not inherited.
    env: dict[str, str]
    # True lets the task use the host network; False gives it an empty namespace where possible.
    network: bool
    cpus: int
    # Address-space limit (RLIMIT_AS); None for none, as CUDA maps far more than it uses.
    memory_bytes: int | None
    # The task's disk budget: the largest file it may write (RLIMIT_FSIZE; the node also
    # measures the whole working directory against it); None for none.
    disk_bytes: int | None
    max_runtime_s: int
    # Resident memory the whole task may use (a cgroup's memory.max, where the node has them).
    resident_bytes: int | None = None
    # Host paths the task may read but not write, mounted where they are (its inputs, a dataset).
    read_only: tuple[Path, ...] = ()
    # The GPUs (NVML indexes) leased with the task: the only ones whose devices it sees.
    gpus: tuple[int, ...] = ()

    @property
    def cpu_seconds(self) -> int:
        """The CPU-time limit: the wall-clock limit on every core, and a little for start-up."""
        return self.max_runtime_s * max(1, self.cpus) + _CPU_SLACK_S

    @classmethod
    def probe(cls, workdir: Path) -> SandboxSpec:
        """A task that only starts and exits: what a node tries at start-up."""
        return cls(
            argv=["true"],
            workdir=workdir,
            env={"PATH": "/usr/bin:/bin"},
            network=False,
            cpus=1,
            memory_bytes=None,
            disk_bytes=None,
            max_runtime_s=10,
        )


class TaskProcess(Protocol):
    """A started task, whatever runs it (a process group, a container)."""

    @property
    def pid(self) -> int: ...

    @property
    def stdout(self) -> IO[bytes]: ...

    @property
    def stderr(self) -> IO[bytes]: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout_s: float) -> int | None: ...

    def terminate_group(self, grace_s: float) -> None: ...

    def kill_group(self) -> None: ...


class Runner(Protocol):
    def start(self, spec: SandboxSpec) -> TaskProcess: ...


class RunningProcess:
    """A task's process, leader of its own process group, so signals reach all it spawned."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        assert popen.stdout is not None
        assert popen.stderr is not None
        self._stdout: IO[bytes] = popen.stdout
        self._stderr: IO[bytes] = popen.stderr

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def stdout(self) -> IO[bytes]:
        return self._stdout

    @property
    def stderr(self) -> IO[bytes]:
        return self._stderr

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def terminate_group(self, grace_s: float) -> None:
        """SIGTERM the whole group, give it ``grace_s`` to save and exit, then SIGKILL the rest."""
        self._signal_group(signal.SIGTERM)
        self.wait(grace_s)
        # Even when the leader exited in time, children it left behind are killed here.
        self._signal_group(signal.SIGKILL)
        self.wait(1.0)

    def kill_group(self) -> None:
        self._signal_group(signal.SIGKILL)
        self.wait(1.0)

    def _signal_group(self, sig: signal.Signals) -> None:
        # The group id is the leader's pid (start_new_session); it outlives the leader while any
        # member lives, so this also reaches orphaned grandchildren.
        try:
            os.killpg(self._popen.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is gone already
        except PermissionError as exc:
            log.warning("cannot signal task group %d: %s", self._popen.pid, exc)


class ProcessRunner:
    """Starts tasks as local process groups under the limits of their ``SandboxSpec``."""

    def __init__(self, isolation: Isolation) -> None:
        self.isolation = isolation
        self._netns_prefix = network_prefix(isolation)

    def start(self, spec: SandboxSpec) -> RunningProcess:
        argv = list(spec.argv)
        if not spec.network and self._netns_prefix:
            argv = [*self._netns_prefix, *argv]
        popen = subprocess.Popen(
            argv,
            cwd=spec.workdir,
            env=spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_limits_setter(spec),
        )
        log.debug("started pid %d: %s", popen.pid, argv)
        return RunningProcess(popen)


def _limits_setter(spec: SandboxSpec) -> Callable[[], None]:
    """A preexec_fn applying the spec's limits in the child, between fork and exec."""
    limits: list[tuple[int, int]] = [
        (resource.RLIMIT_CPU, spec.cpu_seconds),
        (resource.RLIMIT_NOFILE, _OPEN_FILES_LIMIT),
        (resource.RLIMIT_CORE, 0),
    ]
    if spec.memory_bytes is not None:
        limits.append((resource.RLIMIT_AS, spec.memory_bytes))
    if spec.disk_bytes is not None:
        limits.append((resource.RLIMIT_FSIZE, spec.disk_bytes))

    def apply() -> None:
        for which, value in limits:
            _, hard = resource.getrlimit(which)
            # An unprivileged process cannot raise its hard limit: never ask for more than it has.
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))

    return apply
