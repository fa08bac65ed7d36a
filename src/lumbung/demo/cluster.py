"""Real hub and node processes on 127.0.0.1: the one launcher of the demo, the end-to-end tests
and the benchmarks.

Every process is the leader of its own process group (its own session), writes to its own log
file under the cluster's root, and is stopped as a group: SIGTERM first (a node drains, uvicorn
finishes open requests), SIGKILL for whatever is left. A hub publishes its port in
``<data_dir>/port`` once it listens; ``wait_for_port`` waits for that file and, if the process
dies first, raises with the end of its log, which is what a failed start needs to show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

from lumbung.errors import Unavailable

HOST = "127.0.0.1"
# A hub that has not published its port by then failed to start (its log says why).
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_LOG_TAIL_LINES = 15


def lumbung_argv(*args: str) -> list[str]:
    """``python -m lumbung ARGS``, with this interpreter."""
    return [sys.executable, "-m", "lumbung", *args]


class Process:
    """One child process, leader of its own process group, its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:  # the child keeps its own descriptor
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else dict(env),
                cwd=cwd,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the whole process group."""
        with suppress(ProcessLookupError):  # already gone
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group: the machine is gone, nothing is saved."""
        self.signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the group, give it ``grace_s``, then SIGKILL what is left."""
        self.signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace_s)
        self.kill()

    def cpu_s(self) -> float:
        """User plus system CPU seconds the process itself has used so far (Linux /proc)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_for_port(process: Process, port_file: Path, timeout_s: float = START_TIMEOUT_S) -> int:
    """The port ``process`` publishes in ``port_file``; ``Unavailable`` with the end of its log
    if it exits or takes longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = port_file.read_text().strip() if port_file.is_file() else ""
        if text.isdigit():
            return int(text)
        if not process.alive():
            raise Unavailable(f"{process.name} exited at start-up:\n{process.log_tail()}")
        time.sleep(0.05)
    process.kill()
    raise Unavailable(
        f"{process.name} did not publish its port within {timeout_s:.0f} s:\n{process.log_tail()}"
    )


class Cluster:
    """A hub and nodes as processes, each in ``root/<name>`` with its log in ``root/<name>.log``.

    A hub started again under the same name keeps its data directory and its port, as a hub
    restarted behind a load balancer would.
    """

    def __init__(self, root: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.env = env
        self.procs: dict[str, Process] = {}
        self.hub_url = ""
        self._ports: dict[str, int] = {}  # hub name -> its port

    def start(self, name: str, argv: list[str], *, cwd: Path | None = None) -> Process:
        process = Process(name, argv, self.root / f"{name}.log", env=self.env, cwd=cwd)
        self.procs[name] = process
        return process

    def start_hub(self, *flags: str, name: str = "hub", timeout_s: float = START_TIMEOUT_S) -> str:
        """``lumbung hub serve`` with ``flags``; its URL once it listens."""
        data_dir = self.root / name
        port_file = data_dir / "port"
        port_file.unlink(missing_ok=True)
        port = self._ports.get(name, 0)
        argv = lumbung_argv("hub", "serve", "--data-dir", str(data_dir), "--port", str(port))
        process = self.start(name, [*argv, *flags])
        self._ports[name] = wait_for_port(process, port_file, timeout_s)
        self.hub_url = f"http://{HOST}:{self._ports[name]}"
        return self.hub_url

    def start_node(self, name: str, *flags: str) -> Process:
        """``lumbung node start`` against the cluster's hub, in ``root/<name>``."""
        argv = lumbung_argv(
            "node", "start", "--hub", self.hub_url, "--data-dir", str(self.root / name)
        )
        return self.start(name, [*argv, "--name", name, *flags])

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def log_tail(self, name: str, lines: int = _LOG_TAIL_LINES) -> str:
        return self.procs[name].log_tail(lines)

    def logs(self, tail_chars: int = 3000) -> str:
        """The end of every process's log, for a failure report."""
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text(errors='replace')[-tail_chars:]}"
            for p in self.procs.values()
            if p.log_path.exists()
        )

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the nodes (together, so their drains overlap), then the hubs."""
        hubs = [p for name, p in self.procs.items() if name in self._ports]
        self._stop([p for p in self.procs.values() if p not in hubs], grace_s)
        self._stop(hubs, grace_s)

    @staticmethod
    def _stop(processes: list[Process], grace_s: float) -> None:
        for process in processes:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in processes:
            with suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            process.kill()  # a node stops its own tasks on SIGTERM; the rest of the group goes now
