"""One task attempt from assignment to report: prepare, run, checkpoint, finish, clean up.

A ``TaskRun`` owns its process on its own thread. Other threads only ask it things: its progress
(the heartbeat), to cancel (the hub said so), or to drain (the node is stopping).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lumbung.client import NodeSession
from lumbung.config import NodeConfig
from lumbung.errors import Conflict, Forbidden, LumbungError, NotFound, Rejected, Unavailable
from lumbung.node.checkpoints import pack_dir, unpack
from lumbung.node.logs import LogShipper
from lumbung.node.sandbox import Runner, SandboxSpec, TaskProcess, scrubbed_env
from lumbung.node.train_courier import Courier
from lumbung.train.data import default_cache_dir, fetch_sdist
from lumbung.wire.api import Assignment, CheckpointReport, LogChunk, TaskComplete, TaskRelease
from lumbung.wire.train import TrainSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

_GIB = 1024**3
# Address space granted beyond the task's memory: shared libraries and thread stacks are mapped
# (counted by RLIMIT_AS) long before they are resident, and the spec's memory_gb means resident.
_ADDRESS_SPACE_HEADROOM_BYTES = 1 * _GIB
# Hub calls that fail as Unavailable are retried this many times, the delay doubling up to the cap:
# about half a minute in all, long enough for a hub restart behind a load balancer.
_HUB_ATTEMPTS = 6
_HUB_FIRST_DELAY_S = 0.5
_HUB_MAX_DELAY_S = 8.0
_SUPERVISE_TICK_S = 0.2
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
        # Absolute: the task runs in its workdir, and the paths it is given must still resolve.
        tasks_dir = config.data_dir.resolve() / "tasks"
        self.workdir = tasks_dir / f"{assignment.task_id}-{assignment.attempt}"
        # Packed outside the workdir, so packing never reads its own output.
        self._archive = tasks_dir / f"{assignment.task_id}-{assignment.attempt}.checkpoint.tar.gz"
        self._last_checkpoint = assignment.resume_from
        self._progress = 0.0
        self._dataset_env: dict[str, str] = {}
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

    def progress(self) -> float:
        """The task's own estimate, 0..1, from the file named by LUMBUNG_PROGRESS_FILE."""
        try:
            text = (self.workdir / "progress").read_text().strip()
            value = json.loads(text) if text else self._progress
            if isinstance(value, dict):
                value = value.get("progress", self._progress)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._progress = min(1.0, max(0.0, float(value)))
        except (OSError, ValueError):
            pass  # no file yet, or caught mid-write: keep the last good value
        return self._progress

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
        except Exception:
            log.exception("task %s: the node failed to run it", self.task_id)
        finally:
            _remove_tree(self.workdir)
            self._archive.unlink(missing_ok=True)
            self._done.set()

    def _run_attempt(self) -> None:
        try:
            self._prepare()
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
            process = self._runner.start(self._sandbox_spec())
        except OSError as exc:
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
        courier = Courier(
            self._session, self.task_id, self.attempt, self.workdir / "rounds", self._runtime_s
        )
        stop = threading.Event()
        thread = threading.Thread(
            target=courier.run, args=(stop,), name=f"courier-{self.task_id}", daemon=True
        )
        thread.start()
        return _CourierThread(thread, stop)

    def _prepare(self) -> None:
        a = self.assignment
        _remove_tree(self.workdir)
        for sub in ("inputs", "checkpoint", "tmp"):
            (self.workdir / sub).mkdir(parents=True)
        inputs = self.workdir / "inputs"
        for name, sha256 in sorted(a.inputs.items()):
            dest = _inside(inputs, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._hub(functools.partial(self._session.download, sha256, dest), lease=False)
        _make_read_only(inputs)
        if a.kind == "train" and a.train is not None:
            self._prepare_training(a.train)
        if a.resume_from is not None:
            sha = a.resume_from
            self._hub(lambda: self._session.download(sha, self._archive), lease=False)
            unpack(self._archive, self.workdir / "checkpoint")
            self._archive.unlink()

    def _prepare_training(self, train: TrainSpec) -> None:
        """The dataset where the trainer, which has no network, can read it."""
        (self.workdir / "rounds").mkdir()
        sha = train.dataset.sha256
        if sha is not None:
            dest = self.workdir / "dataset.txt"
            self._hub(lambda: self._session.download(sha, dest), lease=False)
            self._dataset_env = {"LUMBUNG_TRAIN_TEXT": str(dest)}
        else:
            # The operator's cache (not the task's HOME): nodes on one machine share it.
            sdist = fetch_sdist(default_cache_dir())
            self._dataset_env = {"LUMBUNG_TRAIN_SDIST": str(sdist)}

    def _sandbox_spec(self) -> SandboxSpec:
        a = self.assignment
        cpus = int(str(a.resources.get("cpus", 1)))
        memory_gb = float(str(a.resources.get("memory_gb", 1.0)))
        disk_gb = float(str(a.resources.get("disk_gb", 0.0)))
        training = a.kind == "train"
        if training:
            # The sandboxed half of a DiLoCo worker; the node's courier thread talks to the hub.
            argv = [sys.executable, "-m", "lumbung.train.trainer"]
        else:
            argv = a.command or [sys.executable, "-m", "lumbung.node.entry", str(a.entrypoint)]
        return SandboxSpec(
            argv=list(argv),
            workdir=self.workdir,
            env=scrubbed_env(self._task_env(), self.workdir, cpus=cpus),
            network=a.network,
            cpus=cpus,
            # CUDA, and torch on the CPU, reserve far more address space than they use, so GPU
            # and training tasks get no RLIMIT_AS.
            memory_bytes=None
            if self.gpu_indices or training
            else int(memory_gb * _GIB) + _ADDRESS_SPACE_HEADROOM_BYTES,
            disk_bytes=int(disk_gb * _GIB) or None,
            max_runtime_s=a.max_runtime_s,
        )

    def _task_env(self) -> dict[str, str]:
        a = self.assignment
        env = dict(a.env)
        # Empty for CPU tasks: a task sees only the GPUs the node handed it.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.gpu_indices)
        env.update(
            LUMBUNG_TASK_ID=a.task_id,
            LUMBUNG_JOB_ID=a.job_id,
            LUMBUNG_ATTEMPT=str(a.attempt),
            LUMBUNG_CHECKPOINT_DIR=str(self.workdir / "checkpoint"),
            LUMBUNG_PROGRESS_FILE=str(self.workdir / "progress"),
            LUMBUNG_INPUTS_DIR=str(self.workdir / "inputs"),
            LUMBUNG_PARAMS=json.dumps(a.params, sort_keys=True),
        )
        for name, value in a.params.items():
            env[f"LUMBUNG_PARAM_{name.upper()}"] = (
                value if isinstance(value, str) else json.dumps(value)
            )
        if a.kind == "train" and a.train is not None:
            env.update(
                LUMBUNG_TRAIN_SPEC=a.train.model_dump_json(),
                LUMBUNG_TRAIN_DIR=str(self.workdir / "rounds"),
                **self._dataset_env,
            )
        return env

    def _supervise(self, process: TaskProcess) -> tuple[str, int | None]:
        """Watch the task until it exits or must stop; (outcome, exit code if it exited)."""
        a = self.assignment
        deadline = self._started_at + a.max_runtime_s
        interval_s = a.checkpoint_interval_s
        next_checkpoint = self._started_at + interval_s
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
        elif outcome == "drain":
            self._checkpoint()
            self._release("node draining")
        else:
            log.info("task %s stopped (%s), not reported", self.task_id, outcome)

    # --- reports to the hub ---------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Upload checkpoint/ if it changed since the last one the hub knows of."""
        try:
            sha256 = pack_dir(self.workdir / "checkpoint", self._archive)
        except OSError as exc:
            # Usually a file replaced while it was read; the next interval will try again.
            log.warning("task %s: cannot pack checkpoint: %s", self.task_id, exc)
            return
        if sha256 is None or sha256 == self._last_checkpoint:
            return
        report = CheckpointReport(
            attempt=self.attempt,
            sha256=sha256,
            size_bytes=self._archive.stat().st_size,
            prev_sha256=self._last_checkpoint,
            progress=self.progress(),
            runtime_s=self._runtime_s(),
        )
        try:
            self._hub(lambda: self._session.upload_file(self._archive))
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
        outputs: dict[str, str] = {}
        missing: list[str] = []
        for name in self.assignment.outputs:
            try:
                path = _inside(self.workdir, name)
            except LumbungError:
                path = None
            # A symlink could point at any file of the node's; only regular files are uploaded.
            if path is None or path.is_symlink() or not path.is_file():
                missing.append(name)
                continue
            try:
                outputs[name] = self._hub(functools.partial(self._session.upload_file, path))
            except Unavailable as exc:
                log.warning("task %s: output %s not uploaded: %s", self.task_id, name, exc)
                missing.append(name)
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
        self._hub(lambda: self._session.complete(self.task_id, result))
        log.info("task %s attempt %d: %s", self.task_id, self.attempt, error or "done")

    def _release(self, reason: str) -> None:
        release = TaskRelease(attempt=self.attempt, runtime_s=self._runtime_s(), reason=reason)
        self._hub(lambda: self._session.release(self.task_id, release))
        log.info("task %s released: %s", self.task_id, reason)

    def _runtime_s(self) -> float:
        return max(0.0, time.monotonic() - self._started_at)

    def _hub(self, call: Callable[[], T], *, lease: bool = True) -> T:
        """Call the hub, retrying while it is unavailable; a refusal means the lease is gone."""
        delay_s = _HUB_FIRST_DELAY_S
        for attempt in range(_HUB_ATTEMPTS):
            try:
                return call()
            except Unavailable as exc:
                if attempt == _HUB_ATTEMPTS - 1:
                    raise
                log.warning("hub unavailable, retrying in %.1f s: %s", delay_s, exc)
                time.sleep(delay_s)
                delay_s = min(2 * delay_s, _HUB_MAX_DELAY_S)
            except (Forbidden, Conflict, NotFound) as exc:
                if not lease:
                    raise
                raise LeaseLost(str(exc)) from exc
        raise AssertionError("unreachable")


def _inside(base: Path, name: str) -> Path:
    """``base/name``, refused if ``name`` would lead out of ``base``."""
    path = base / name
    if not path.resolve().is_relative_to(base.resolve()):
        raise Rejected(f"path {name!r} leads outside the task's directory")
    return path


def _make_read_only(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)


def _remove_tree(root: Path) -> None:
    if not root.exists():
        return
    # Read-only directories (inputs/) must be writable again before their entries can be removed.
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(root, ignore_errors=True)
