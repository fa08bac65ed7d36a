"""The sandbox: every task, the trainer included, under bubblewrap (``bwrap``).

A task gets new user (or, on a root node, an unprivileged uid of its own), mount, PID, IPC, UTS and
(unless its spec asks for network) network namespaces. Its filesystem holds only the read-only
system paths a program needs (/usr, the library links, a few files of /etc), the node's Python
runtime read-only, its own working directory, its read-only inputs and a private /tmp: no node
data directory, no other task, no host socket, a fresh /proc that shows only its own processes.
``--die-with-parent`` and the PID namespace mean nothing it starts outlives it or the node, and a
new session keeps it off the node's terminal. Limits are set inside by ``lumbung.node.launch``.

The node keeps one task's files from another's and its own key from all of them; what it does not
stop (the shared kernel, a task with network reaching the host's loopback) is in
docs/threat-model.md.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lumbung
from lumbung.errors import ConfigError, Unavailable
from lumbung.node import launch, uid_blocks
from lumbung.node.cgroup import Cgroups, TaskLimits, find_cgroups
from lumbung.node.sandbox import RunningProcess, SandboxSpec
from lumbung.wire.api import Isolation

log = logging.getLogger(__name__)

# Host paths a dynamically linked program and Python need, bound read-only where they exist.
_SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_FILES = (
    "alternatives",
    "ca-certificates",
    "group",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "passwd",
    "perl",
    "resolv.conf",
    "ssl/certs",
    "timezone",
)
# The device nodes a CUDA program opens besides its own GPUs' /dev/nvidiaN.
_NVIDIA_SHARED_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_SHM_MAX_BYTES = 1024**3
_TMP_MAX_BYTES = 256 * 1024**2
_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SandboxPolicy:
    """What every task on this node is held to, beyond its own spec."""

    # Processes and threads one task may run at once (RLIMIT_NPROC in its own user namespace).
    max_processes: int = 512
    # Open files per process (RLIMIT_NOFILE).
    open_files: int = 1024
    # On a root node, task slot i runs as uid (and gid) base + i: a user of its own, not root.
    task_uid_base: int = uid_blocks.FIRST_UID
    slots: int = 1


class SandboxedProcess(RunningProcess):
    """bubblewrap's process; its task runs in a PID namespace below it."""

    def __init__(self, popen: subprocess.Popen[bytes], on_exit: Callable[[], None]) -> None:
        super().__init__(popen)
        self._on_exit = on_exit
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self._noted(super().poll())

    def wait(self, timeout_s: float) -> int | None:
        return self._noted(super().wait(timeout_s))

    def terminate_group(self, grace_s: float) -> None:
        """SIGTERM the task's own processes (bubblewrap passes no signal on), then SIGKILL all."""
        for pid in _descendants(self.pid):
            if _command_name(pid) != "bwrap":
                _signal(pid, signal.SIGTERM)
        self.wait(grace_s)
        self.kill_group()

    def _noted(self, code: int | None) -> int | None:
        if code is not None and not self._exited.is_set():
            self._exited.set()
            self._on_exit()
        return code


class BwrapRunner:
    """Starts each task in a fresh bubblewrap sandbox (see the module docstring)."""

    def __init__(
        self,
        bwrap: str,
        policy: SandboxPolicy,
        runtime: list[Path],
        cgroups: tuple[Cgroups | None, str] = (None, "not looked for"),
    ) -> None:
        self.bwrap = bwrap
        self.policy = policy
        self.runtime = runtime
        self.cgroups, self._no_cgroups_why = cgroups
        self.as_root = os.geteuid() == 0
        self._lock = threading.Lock()
        self._uids_in_use: set[int] = set()
        self.isolation = Isolation(
            runner="process", level="sandbox", network="netns", notes=self._notes()
        )

    def start(self, spec: SandboxSpec) -> SandboxedProcess:
        uid = self._take_uid() if self.as_root else None
        cgroup: Path | None = None

        def cleanup() -> None:
            if cgroup is not None:
                Cgroups.remove(cgroup)
            self._release_uid(uid)

        try:
            if uid is not None:
                _give_tree(spec.workdir, uid, keep=spec.read_only)
            if self.cgroups is not None:
                cgroup = self.cgroups.create(f"task-{spec.workdir.name}", self._limits(spec))
            argv = self.argv(spec, uid)
            popen = subprocess.Popen(
                argv,
                env=spec.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                # Into its cgroup before bubblewrap starts anything, so nothing escapes it.
                preexec_fn=None if cgroup is None else functools.partial(Cgroups.enter, cgroup),
            )
        except BaseException:
            cleanup()
            raise
        log.debug("started pid %d: %s", popen.pid, spec.argv)
        return SandboxedProcess(popen, cleanup)

    def _limits(self, spec: SandboxSpec) -> TaskLimits:
        return TaskLimits(
            memory_bytes=spec.resident_bytes,
            max_processes=self.policy.max_processes,
            cpus=spec.cpus,
        )

    def argv(self, spec: SandboxSpec, uid: int | None) -> list[str]:
        """bubblewrap's whole command line for ``spec``, the launcher and the task's argv last."""
        argv = [self.bwrap, *_namespaces(spec.network, user_ns=not self.as_root)]
        # TMPDIR points into the working directory, where the disk budget counts it; /tmp is
        # for programs that ignore TMPDIR, in memory and small. Mounted first, so that host paths
        # below /tmp (a working directory, a runtime) are mounted over it, not hidden by it.
        argv += ["--perms", "1777", "--size", str(_TMP_MAX_BYTES), "--tmpfs", "/tmp"]  # noqa: S108 - the sandbox's own
        etc = _etc_files()
        argv += _parent_dirs([*etc, *self.runtime, spec.workdir, *spec.read_only])
        argv += _system_links()
        for path in [*etc, *self.runtime]:
            argv += ["--ro-bind", str(path), str(path)]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        shm_bytes = min(spec.memory_bytes or _SHM_MAX_BYTES, _SHM_MAX_BYTES)
        argv += ["--perms", "1777", "--size", str(shm_bytes), "--tmpfs", "/dev/shm"]  # noqa: S108
        argv += _gpu_binds(spec.gpus)
        workdir = str(spec.workdir)
        argv += ["--bind", workdir, workdir]
        for path in spec.read_only:
            argv += ["--ro-bind", str(path), str(path)]
        # Last: nothing may be created in the sandbox's own root once it is set up.
        argv += ["--remount-ro", "/", "--chdir", workdir, "--"]
        return argv + self._launcher(spec, uid)

    def _launcher(self, spec: SandboxSpec, uid: int | None) -> list[str]:
        limits = {
            "nproc": self.policy.max_processes,
            "nofile": self.policy.open_files,
            "core": 0,
            "cpu": spec.cpu_seconds,
        }
        if spec.memory_bytes is not None:
            limits["as"] = spec.memory_bytes
        if spec.disk_bytes is not None:
            limits["fsize"] = spec.disk_bytes
        argv = [sys.executable, "-I", "-S", "-B", launch.__file__]
        for name, value in limits.items():
            argv += ["--limit", f"{name}={value}"]
        if uid is not None:
            argv += ["--uid", str(uid), "--gid", str(uid)]
        return [*argv, "--", *spec.argv]

    def _notes(self) -> list[str]:
        who = (
            f"tasks run as uids {self.policy.task_uid_base}+ (the node is root)"
            if self.as_root
            else "tasks run in a user namespace of their own"
        )
        if self.cgroups is not None:
            held = (
                f"a cgroup each under {self.cgroups.base} ({', '.join(self.cgroups.controllers)})"
            )
        else:
            held = f"no cgroups ({self._no_cgroups_why})"
        return [
            f"bubblewrap sandbox ({self.bwrap}): own mount, PID, IPC, UTS and network "
            f"namespaces; {who}",
            f"limits per task: {self.policy.max_processes} processes, "
            f"{self.policy.open_files} open files, address space, CPU time, disk budget; {held}",
        ]

    def _take_uid(self) -> int:
        with self._lock:
            for i in range(max(1, self.policy.slots) * 2):
                uid = self.policy.task_uid_base + i
                if uid not in self._uids_in_use:
                    self._uids_in_use.add(uid)
                    return uid
        raise Unavailable("every task uid of this node is in use")

    def _release_uid(self, uid: int | None) -> None:
        if uid is not None:
            with self._lock:
                self._uids_in_use.discard(uid)


def _namespaces(network: bool, *, user_ns: bool) -> list[str]:
    argv = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc"]
    argv += ["--unshare-uts", "--unshare-cgroup-try", "--hostname", "lumbung-task"]
    if not network:
        argv.append("--unshare-net")
    if user_ns:
        # An unprivileged node: the task is the node's user inside a namespace of its own, with
        # no capabilities and no way to make further user namespaces.
        return [*argv, "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    # A root node: the launcher needs exactly these two to drop to the task's uid, which then
    # takes every capability with it.
    return [*argv, "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]


def _system_links() -> list[str]:
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in _SYSTEM_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    return argv


def _etc_files() -> list[Path]:
    return [Path("/etc") / name for name in _ETC_FILES if (Path("/etc") / name).exists()]


def _parent_dirs(paths: list[Path]) -> list[str]:
    """Create the directories above ``paths`` as 0755: left to itself bubblewrap copies the
    host's modes, and a 0700 /root (where a root node's Python may live) or data directory
    would keep the task from its own runtime and working directory."""
    parents = sorted({parent for path in paths for parent in path.parents if parent != Path("/")})
    argv: list[str] = []
    for parent in parents:
        argv += ["--perms", "0755", "--dir", str(parent)]
    return argv


def _gpu_binds(gpus: tuple[int, ...]) -> list[str]:
    """Only the leased GPUs' device nodes, and the driver's shared ones, when there are any."""
    if not gpus:
        return []
    names = [f"nvidia{i}" for i in gpus] + list(_NVIDIA_SHARED_DEVICES)
    argv: list[str] = []
    for name in names:
        device = Path("/dev") / name
        if device.exists():
            argv += ["--dev-bind", str(device), str(device)]
    return argv


def runtime_paths(data_dir: Path) -> list[Path]:
    """The node's Python runtime and the lumbung package, which tasks and the trainer run on.

    Only the package directory is exposed, not the tree around it (an editable install lives in
    a source checkout that may hold data directories). ``ConfigError`` if any of them holds the
    node's data directory: the key and every other task's files would be readable.
    """
    candidates = [Path(sys.base_prefix), Path(sys.prefix), Path(lumbung.__file__).parent]
    candidates += [Path(p) for p in _site_packages()]
    paths: list[Path] = []
    for path in sorted({p.resolve() for p in candidates if p.exists()}):
        if not any(path.is_relative_to(kept) for kept in paths):
            paths.append(path)
    data = data_dir.resolve()
    for path in paths:
        if data.is_relative_to(path) or path in (Path("/"), Path.home().resolve()):
            raise ConfigError(
                f"the node's data directory {data} lies inside {path}, which tasks must be able "
                "to read (the Python runtime): choose a data directory elsewhere",
                field="data_dir",
            )
    return [p for p in paths if not p.is_relative_to("/usr")]


def _site_packages() -> list[str]:
    import site

    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def find_bwrap(policy: SandboxPolicy, data_dir: Path) -> tuple[BwrapRunner | None, str]:
    """A runner if bubblewrap can start a sandbox here (tried for real), else why not."""
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    runner = BwrapRunner(path, policy, runtime_paths(data_dir), find_cgroups())
    probe_dir = data_dir.resolve() / "tasks" / "probe"
    shutil.rmtree(probe_dir, ignore_errors=True)
    (probe_dir / "tmp").mkdir(parents=True)
    try:
        done = subprocess.run(
            runner.argv(
                SandboxSpec.probe(probe_dir),
                runner.policy.task_uid_base if runner.as_root else None,
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bubblewrap cannot start a sandbox: {exc}"
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
        return None, f"bubblewrap cannot start a sandbox here: {detail[-300:]}"
    return runner, ""


def _give_tree(root: Path, uid: int, keep: tuple[Path, ...]) -> None:
    """Hand the task's working directory to its uid, except the read-only paths within it."""
    kept = {p.resolve() for p in keep}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here.resolve() in kept:
            dirnames.clear()
            continue
        os.chown(here, uid, uid, follow_symlinks=False)
        for name in filenames:
            if (here / name).resolve() not in kept:
                os.chown(here / name, uid, uid, follow_symlinks=False)


def _descendants(pid: int) -> Iterator[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_of(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        yield child
        stack.extend(children.get(child, []))


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone, or not ours
        os.kill(pid, sig)
