"""The second runner: each task in a Docker or Podman container, behind the ``Runner`` interface.

A container is a stronger boundary than the process sandbox: its own filesystem (read-only but for
the task's directory, mounted at /work), PID and network namespaces, a cgroup holding its memory,
CPUs and process count. The task's environment reaches the engine through the CLI's own
environment (``-e NAME`` without a value), so no secret of the task shows in the process list.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from lumbung.errors import Unavailable
from lumbung.node.sandbox import RunningProcess, SandboxSpec
from lumbung.wire.api import Isolation

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "python:3.11-slim"
CONTAINER_WORKDIR = "/work"
# The node's own lumbung package is mounted here, so its entry.py (standard library only) runs in
# any image with a Python 3.11+.
_LUMBUNG_MOUNT = "/opt/lumbung"
_PIDS_LIMIT = 512
_INFO_TIMEOUT_S = 10.0
_ENGINE_CALL_TIMEOUT_S = 30.0
# Variables the engine CLI itself needs from the node's environment to find its daemon.
_ENGINE_ENV_KEYS = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "XDG_RUNTIME_DIR")


class ContainerProcess(RunningProcess):
    """The ``docker run`` CLI process; stopping it stops the container through the engine."""

    def __init__(self, popen: subprocess.Popen[bytes], engine: str, name: str) -> None:
        super().__init__(popen)
        self._engine = engine
        self.name = name

    def terminate_group(self, grace_s: float) -> None:
        # `stop` sends SIGTERM to the container's init and SIGKILL after the grace period.
        grace_whole_s = max(0, int(grace_s))
        self._engine_call(["stop", "-t", str(grace_whole_s), self.name], grace_whole_s)
        super().terminate_group(1.0)

    def kill_group(self) -> None:
        self._engine_call(["kill", self.name], 0)
        super().kill_group()

    def _engine_call(self, args: list[str], extra_timeout_s: float) -> None:
        # Fails harmlessly when the container has already gone (--rm removed it); a hung engine
        # is left behind, and the CLI's process group is killed by the caller anyway.
        try:
            subprocess.run(
                [self._engine, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_ENGINE_CALL_TIMEOUT_S + extra_timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("%s %s failed: %s", Path(self._engine).name, args[0], exc)


class ContainerRunner:
    def __init__(self, engine: str | None = None, image: str = DEFAULT_IMAGE) -> None:
        found = _find_engine(engine)
        _check_engine(found)
        self.engine = found
        self.image = image
        self.isolation = Isolation(
            runner="container",
            level="sandbox",
            network="netns",
            notes=[f"{Path(found).name} image {image}"],
        )

    def start(self, spec: SandboxSpec) -> ContainerProcess:
        name = "lumbung-" + secrets.token_hex(6)
        argv, cli_env = container_command(self.engine, self.image, spec, name)
        popen = subprocess.Popen(
            argv,
            env=cli_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        return ContainerProcess(popen, self.engine, name)


def _find_engine(engine: str | None) -> str:
    candidates = [engine] if engine else ["docker", "podman"]
    for candidate in candidates:
        path = shutil.which(candidate)
        if path:
            return path
    raise Unavailable(
        "container runner needs a running Docker or Podman engine: "
        f"no {' or '.join(candidates)} command on PATH"
    )


def _check_engine(engine: str) -> None:
    try:
        done = subprocess.run(
            [engine, "info"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_INFO_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(
            f"container runner needs a running Docker or Podman engine: {exc}"
        ) from exc
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise Unavailable(
            "container runner needs a running Docker or Podman engine: "
            f"`{Path(engine).name} info` failed: {detail[-1] if detail else done.returncode}"
        )


def container_command(
    engine: str, image: str, spec: SandboxSpec, name: str
) -> tuple[list[str], dict[str, str]]:
    """The engine's argv for ``spec`` and the environment to run that CLI with."""
    host_workdir = str(spec.workdir)

    def inside(value: str) -> str:
        # The task's paths (LUMBUNG_CHECKPOINT_DIR, ...) point at the host workdir: map them.
        if not value.startswith(host_workdir):
            return value
        return CONTAINER_WORKDIR + value[len(host_workdir) :]

    argv = [engine, "run", "--rm", "--name", name, "--init"]
    if not spec.network:
        argv += ["--network", "none"]
    if spec.memory_bytes is not None:
        argv += ["--memory", str(spec.memory_bytes)]
    argv += ["--cpus", str(spec.cpus), "--pids-limit", str(_PIDS_LIMIT), "--ulimit", "core=0"]
    argv += ["--read-only", "--tmpfs", "/tmp"]  # noqa: S108 - the container's own
    argv += ["-v", f"{host_workdir}:{CONTAINER_WORKDIR}", "-w", CONTAINER_WORKDIR]
    argv += ["-v", f"{Path(__file__).resolve().parents[1]}:{_LUMBUNG_MOUNT}/lumbung:ro"]
    argv += ["--user", f"{os.getuid()}:{os.getgid()}"]

    cli_env = {k: os.environ[k] for k in _ENGINE_ENV_KEYS if k in os.environ}
    task_env = {k: inside(v) for k, v in spec.env.items() if k != "PATH"}
    task_env.setdefault("PYTHONPATH", _LUMBUNG_MOUNT)
    gpus = [g for g in task_env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
    if gpus:
        argv += ["--gpus", f'"device={",".join(gpus)}"']
        # Inside the container the devices it was given are numbered from 0.
        task_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(gpus)))
    for key, value in sorted(task_env.items()):
        if key in cli_env:
            argv += ["-e", f"{key}={value}"]  # the CLI needs its own value of this one
        else:
            argv += ["-e", key]
            cli_env[key] = value

    command = [inside(arg) for arg in spec.argv]
    if command[:3] == [sys.executable, "-m", "lumbung.node.entry"]:
        # Run entry.py as a script: `-m` would import the lumbung package, whose __init__ needs
        # the node's third-party libraries, absent from a plain Python image.
        command[:3] = ["python", f"{_LUMBUNG_MOUNT}/lumbung/node/entry.py"]
    elif command and command[0] == sys.executable:
        command[0] = "python"  # the node's interpreter path means nothing inside the image
    return [*argv, image, *command], cli_env
