"""What a task attempt tells the hub: its files fetched, checkpoints, logs, outputs, and its end.

Every call goes through the node's one retry policy (``lumbung.node.retry``). A refusal while the
task runs (403, 404, 409) means the hub no longer holds the task for this node: ``LeaseLost``,
which stops the task without another report.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lumbung.client import NodeSession
from lumbung.errors import Conflict, Forbidden, LumbungError, NotFound, Unavailable
from lumbung.node import workfiles
from lumbung.node.checkpoints import pack_dir
from lumbung.node.execution import execution_class
from lumbung.node.retry import call_hub
from lumbung.node.workdir import Restored, WorkDir
from lumbung.wire.api import (
    Assignment,
    CheckpointReport,
    Inventory,
    LogChunk,
    ResumeFailed,
    TaskComplete,
    TaskRelease,
)
from lumbung.wire.commitment import commitment_body

log = logging.getLogger(__name__)

T = TypeVar("T")

# Hub calls made while the task runs (checkpoints, logs) wait this long for a hub that is away: a
# restart behind a load balancer. Reports of a finished attempt (its outputs, completion or
# release) wait for the node's whole hub_patience_s: that work is done and must not be lost.
_HUB_RUNNING_PATIENCE_S = 30.0


class LeaseLost(Conflict):
    """The hub no longer holds this task for this node: stop it without reporting."""


class TaskReports:
    """One attempt's calls to the hub. ``runtime_s`` is the node's clock for the attempt (the hub
    keeps time by its own and caps what is reported)."""

    def __init__(
        self,
        assignment: Assignment,
        session: NodeSession,
        files: WorkDir,
        runtime_s: Callable[[], float],
        *,
        patience_s: float,
        inventory: Inventory,
    ) -> None:
        self.assignment = assignment
        self._inventory = inventory
        self.last_checkpoint = assignment.resume_from
        self._session = session
        self._files = files
        self._runtime_s = runtime_s
        self._patience_s = patience_s

    @property
    def task_id(self) -> str:
        return self.assignment.task_id

    @property
    def attempt(self) -> int:
        return self.assignment.attempt

    def download(self, sha256: str, dest: Path) -> None:
        self._hub(functools.partial(self._session.download, sha256, dest), lease=False)

    def resume_failed(self, restored: Restored) -> None:
        """Tell the hub which newer checkpoints did not restore, so that it does not pay for
        them and the next checkpoint chains on from what was really restored."""
        self.last_checkpoint = restored.sha256
        if not restored.failed:
            return
        report = ResumeFailed(
            attempt=self.attempt,
            failed=restored.failed,
            resumed_from=restored.sha256,
            reason="; ".join(restored.reasons)[:1000],
        )
        self._hub(lambda: self._session.resume_failed(self.task_id, report))

    def checkpoint(self, progress: float) -> None:
        """Upload checkpoint/ if it changed since the last one the hub knows of."""
        files = self._files
        try:
            sha256 = pack_dir(files.checkpoint, files.archive)
        except OSError as exc:
            # Usually a file replaced while it was read; the next interval will try again.
            log.warning("task %s: cannot pack checkpoint: %s", self.task_id, exc)
            return
        if sha256 is None or sha256 == self.last_checkpoint:
            return
        report = CheckpointReport(
            attempt=self.attempt,
            sha256=sha256,
            size_bytes=files.archive.stat().st_size,
            prev_sha256=self.last_checkpoint,
            progress=progress,
            runtime_s=self._runtime_s(),
        )
        try:
            self._hub(lambda: self._session.upload_file(files.archive))
            self._hub(lambda: self._session.report_checkpoint(self.task_id, report))
        except Unavailable as exc:
            log.warning("task %s: checkpoint not uploaded: %s", self.task_id, exc)
            return
        self.last_checkpoint = sha256
        log.info("task %s: checkpoint %s (%d bytes)", self.task_id, sha256[:12], report.size_bytes)

    def upload_outputs(self) -> tuple[dict[str, str], list[str]]:
        """Upload each declared output that is a regular file; (name -> hash, missing names).

        A hub that stays unreachable past the node's patience raises ``Unavailable``: the attempt
        then ends unreported (its lease runs out, which costs no retry), never as "missing".
        """
        outputs: dict[str, str] = {}
        missing: list[str] = []
        for name in self.assignment.outputs:
            try:
                fd = workfiles.open_file(self._files.root, name)
            except (LumbungError, OSError):
                missing.append(name)  # absent, a link (to any file of the node's), not a file
                continue
            try:
                # The open descriptor's path: what is uploaded is the file checked, whatever
                # happens to the name meanwhile.
                path = Path(f"/proc/self/fd/{fd}")
                upload = functools.partial(self._session.upload_file, path)
                outputs[name] = self._hub(upload, patience_s=self._patience_s)
            finally:
                os.close(fd)
        return outputs, missing

    def logs(self, stream: str, text: str) -> None:
        chunk = LogChunk(attempt=self.attempt, stream=stream, text=text)  # type: ignore[arg-type]
        self._hub(lambda: self._session.send_logs(self.task_id, chunk))

    def complete(self, exit_code: int, outputs: dict[str, str], error: str | None) -> None:
        commitment = None
        if error is None and exit_code == 0:
            # Signed before the hub says whether this result will be checked.
            body = commitment_body(
                job_id=self.assignment.job_id,
                task_id=self.task_id,
                attempt=self.attempt,
                node=self._session.node_id,
                outputs=outputs,
                execution_class=execution_class(self.assignment, self._inventory),
            )
            commitment = self._session.commit(body)
        result = TaskComplete(
            attempt=self.attempt,
            exit_code=exit_code,
            outputs=outputs,
            runtime_s=self._runtime_s(),
            error=error,
            commitment=commitment,
        )
        self._hub(lambda: self._session.complete(self.task_id, result), patience_s=self._patience_s)
        log.info("task %s attempt %d: %s", self.task_id, self.attempt, error or "done")

    def release(self, reason: str) -> None:
        release = TaskRelease(attempt=self.attempt, runtime_s=self._runtime_s(), reason=reason)
        self._hub(lambda: self._session.release(self.task_id, release), patience_s=self._patience_s)
        log.info("task %s released: %s", self.task_id, reason)

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
