"""One task attempt from assignment to report: prepare, run, checkpoint, finish, clean up.

A ``TaskRun`` owns its process on its own thread. Other threads only ask it things: its progress
(the heartbeat), to cancel (the hub said so), or to drain (the node is stopping).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lumbung.client import NodeSession
from lumbung.config import NodeConfig
from lumbung.errors import Conflict, Forbidden, LumbungError, NotFound, Unavailable
from lumbung.node import workfiles
from lumbung.node.checkpoints import pack_dir
from lumbung.node.datasets import default_cache_dir, fetch_sdist
from lumbung.node.logs import LogShipper
from lumbung.node.retry import call_hub
from lumbung.node.sandbox import Runner, TaskProcess
from lumbung.node.task_spec import Dataset, disk_budget_bytes, sandbox_spec
from lumbung.node.train_courier import Courier
from lumbung.node.workdir import WorkDir
from lumbung.wire.api import (
    Assignment,
    CheckpointReport,
    LogChunk,
    ResumeFailed,
    TaskComplete,
    TaskRelease,
)
from lumbung.wire.train import TrainSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

# Hub calls made while the task runs (checkpoints, logs) wait this long for a hub that is away: a
# restart behind a load balancer. Reports of a finished attempt (its outputs, completion or
# release) wait for the node's whole hub_patience_s: that work is done and must not be lost.
_HUB_RUNNING_PATIENCE_S = 30.0
_SUPERVISE_TICK_S = 0.2
# How often the working directory is measured against the task's disk budget.
_DISK_CHECK_S = 0.5
# How long to wait for the pipes to close after the task's group is gone.
_PIPE_DRAIN_S = 5.0


class LeaseLost(Conflict):
    """The hub no longer holds this task for this node: stop it without reporting."""


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
        gpu_indices: Sequence[int] = (),
    ) -> None:
        self.assignment = assignment
        self.gpu_indices = tuple(gpu_indices)
        self._config = config
        self._session = session
        self._runner = runner
        self.files = WorkDir(config.data_dir / "tasks", assignment.task_id, assignment.attempt)
        self._last_checkpoint = assignment.resume_from
        self._dataset = Dataset()
        self._disk_problem = ""
        self._request: str | None = None  # "cancel", "drain" or "lease-lost"
        self._drain_grace_s = 0.0
        self._wake = threading.Event()
        self._done = threading.Event()
        self._started_at = time.monotonic()
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
            self._release(f"node could not fetch the task's files: {exc}")
            return
        except (LumbungError, OSError) as exc:
            self._complete(-1, {}, f"node could not prepare the task: {exc}")
            return
        if self._request is not None:
            if self._request == "drain":
                self._release("node draining")
            return
        try:
            spec = sandbox_spec(self.assignment, self.files, self.gpu_indices, self._dataset)
            process = self._runner.start(spec)
        except (OSError, ValueError, Unavailable) as exc:
            # ValueError: what Popen says of an argv or environment it cannot pass (a NUL byte).
            self._complete(127, {}, f"cannot start the task: {exc}")
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
        self.files.fetch_inputs(a.inputs, self._download)
        if a.kind == "train" and a.train is not None:
            self._prepare_training(a.train)
        if a.resume_from is not None:
            self._resume([a.resume_from, *a.resume_chain])

    def _download(self, sha256: str, dest: Path) -> None:
        self._hub(functools.partial(self._session.download, sha256, dest), lease=False)

    def _resume(self, chain: list[str]) -> None:
        """Restore the newest checkpoint of ``chain`` that unpacks within the disk budget and
        tell the hub of the newer ones that did not, so that it does not pay for them and the
        next checkpoint chains on from what was really restored."""
        restored = self.files.restore(
            chain, self._download, max_bytes=disk_budget_bytes(self.assignment)
        )
        self._last_checkpoint = restored.sha256
        if restored.failed:
            report = ResumeFailed(
                attempt=self.attempt,
                failed=restored.failed,
                resumed_from=restored.sha256,
                reason="; ".join(restored.reasons)[:1000],
            )
            self._hub(lambda: self._session.resume_failed(self.task_id, report))

    def _prepare_training(self, train: TrainSpec) -> None:
        """The dataset where the trainer, which has no network, can read it."""
        sha = train.dataset.sha256
        if sha is not None:
            dest = self.workdir / "dataset.txt"
            self._download(sha, dest)
            self._dataset = Dataset(env={"LUMBUNG_TRAIN_TEXT": str(dest)})
        else:
            # The operator's cache (not the task's HOME): nodes on one machine share it, and
            # the sandbox shows the trainer this one file of it, read-only.
            sdist = fetch_sdist(default_cache_dir())
            self._dataset = Dataset(env={"LUMBUNG_TRAIN_SDIST": str(sdist)}, read_only=(sdist,))

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
            outputs, missing = self._upload_outputs()
            error = None
            if code != 0:
                error = f"exit code {code}"
            elif missing:
                error = "missing output " + ", ".join(missing)
            self._complete(code, outputs, error)
        elif outcome == "timeout":
            error = f"time limit of {self.assignment.max_runtime_s} s exceeded"
            self._complete(code, {}, error)
        elif outcome == "disk":
            self._complete(code, {}, self._disk_problem)
        elif outcome == "drain":
            self._checkpoint()
            self._release("node draining")
        else:
            log.info("task %s stopped (%s), not reported", self.task_id, outcome)

    # --- reports to the hub ---------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Upload checkpoint/ if it changed since the last one the hub knows of."""
        try:
            sha256 = pack_dir(self.files.checkpoint, self.files.archive)
        except OSError as exc:
            # Usually a file replaced while it was read; the next interval will try again.
            log.warning("task %s: cannot pack checkpoint: %s", self.task_id, exc)
            return
        if sha256 is None or sha256 == self._last_checkpoint:
            return
        report = CheckpointReport(
            attempt=self.attempt,
            sha256=sha256,
            size_bytes=self.files.archive.stat().st_size,
            prev_sha256=self._last_checkpoint,
            progress=self.progress(),
            runtime_s=self._runtime_s(),
        )
        try:
            self._hub(lambda: self._session.upload_file(self.files.archive))
            self._hub(lambda: self._session.report_checkpoint(self.task_id, report))
        except LeaseLost:
            self._ask("lease-lost")
            return
        except Unavailable as exc:
            log.warning("task %s: checkpoint not uploaded: %s", self.task_id, exc)
            return
        self._last_checkpoint = sha256
        log.info("task %s: checkpoint %s (%d bytes)", self.task_id, sha256[:12], report.size_bytes)

    def _upload_outputs(self) -> tuple[dict[str, str], list[str]]:
        """Upload each declared output that is a regular file; (name -> hash, missing names).

        A hub that stays unreachable past the node's patience raises ``Unavailable``: the attempt
        then ends unreported (its lease runs out, which costs no retry), never as "missing".
        """
        outputs: dict[str, str] = {}
        missing: list[str] = []
        for name in self.assignment.outputs:
            try:
                fd = workfiles.open_file(self.workdir, name)
            except (LumbungError, OSError):
                missing.append(name)  # absent, a link (to any file of the node's), not a file
                continue
            try:
                # The open descriptor's path: what is uploaded is the file checked, whatever
                # happens to the name meanwhile.
                path = Path(f"/proc/self/fd/{fd}")
                upload = functools.partial(self._session.upload_file, path)
                outputs[name] = self._hub(upload, patience_s=self._config.hub_patience_s)
            finally:
                os.close(fd)
        return outputs, missing

    def _send_logs(self, stream: str, text: str) -> None:
        chunk = LogChunk(attempt=self.attempt, stream=stream, text=text)  # type: ignore[arg-type]
        try:
            self._hub(lambda: self._session.send_logs(self.task_id, chunk))
        except LeaseLost:
            self._ask("lease-lost")

    def _complete(self, exit_code: int, outputs: dict[str, str], error: str | None) -> None:
        result = TaskComplete(
            attempt=self.attempt,
            exit_code=exit_code,
            outputs=outputs,
            runtime_s=self._runtime_s(),
            error=error,
        )
        self._hub(
            lambda: self._session.complete(self.task_id, result),
            patience_s=self._config.hub_patience_s,
        )
        log.info("task %s attempt %d: %s", self.task_id, self.attempt, error or "done")

    def _release(self, reason: str) -> None:
        release = TaskRelease(attempt=self.attempt, runtime_s=self._runtime_s(), reason=reason)
        self._hub(
            lambda: self._session.release(self.task_id, release),
            patience_s=self._config.hub_patience_s,
        )
        log.info("task %s released: %s", self.task_id, reason)

    def _runtime_s(self) -> float:
        return max(0.0, time.monotonic() - self._started_at)

    def _hub(
        self,
        call: Callable[[], T],
        *,
        lease: bool = True,
        patience_s: float = _HUB_RUNNING_PATIENCE_S,
    ) -> T:
        """Call the hub (``lumbung.node.retry``); a refusal means the lease is gone
        (``LeaseLost``), unless ``lease`` is False."""
        try:
            return call_hub(call, patience_s=patience_s, what=f"task {self.task_id}")
        except (Forbidden, Conflict, NotFound) as exc:
            if not lease:
                raise
            raise LeaseLost(str(exc)) from exc
