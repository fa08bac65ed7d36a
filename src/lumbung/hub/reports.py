"""What a node reports about a task it holds: logs, checkpoints, completion, release.

Every report names the attempt; a node may report only on a task leased to it (403 otherwise) and
only on the attempt it holds (409 for a stale one, e.g. after its lease expired and the task moved).
"""

from __future__ import annotations

from lumbung.errors import Conflict, Forbidden, Rejected
from lumbung.hub import escrow
from lumbung.hub.context import HubContext
from lumbung.hub.leases import requeue
from lumbung.hub.settle import attempt_work, current_work, settle_job
from lumbung.market.model import CheckpointLink, LogRecord, Task, TaskState
from lumbung.market.states import TaskEvent, fail_event, next_task_state
from lumbung.store.protocol import Changes
from lumbung.wire.api import CheckpointReport, LogChunk, TaskComplete, TaskRelease

_TRUNCATED_NOTE = "[log truncated by the hub: over the per-attempt limit]\n"


def held_task(ctx: HubContext, node_id: str, task_id: str, attempt: int) -> Task:
    """The task, if ``node_id`` holds its lease for ``attempt``; else why not."""
    task = ctx.store.get_task(task_id)
    if task.node_id != node_id:
        raise Forbidden(f"task {task_id} is not leased to this node", field="task_id")
    if task.attempt != attempt:
        raise Conflict(
            f"attempt {attempt} of task {task_id} is over; the task is on attempt {task.attempt}",
            field="attempt",
        )
    if task.state is not TaskState.RUNNING:
        raise Conflict(f"task {task_id} is {task.state}; the lease is gone", field="task_id")
    return task


def append_logs(ctx: HubContext, node_id: str, task_id: str, chunk: LogChunk) -> None:
    task = ctx.store.get_task(task_id)
    if task.node_id != node_id:
        raise Forbidden(f"task {task_id} is not leased to this node", field="task_id")
    if task.attempt != chunk.attempt:
        raise Conflict(f"attempt {chunk.attempt} of task {task_id} is over", field="attempt")
    limit = ctx.config.max_log_bytes_per_task
    if task.log_bytes >= limit:
        return
    text = chunk.text
    size = len(text.encode())
    if task.log_bytes + size > limit:
        text = text.encode()[: max(0, limit - task.log_bytes)].decode(errors="ignore")
        text += _TRUNCATED_NOTE
        size = limit  # marks the attempt full
    else:
        size = task.log_bytes + size
    task.log_bytes = size
    ctx.store.apply(Changes(tasks=[task]))
    ctx.store.append_log(
        LogRecord(0, task.job_id, task.id, chunk.attempt, chunk.stream, text, ctx.clock())
    )


def add_checkpoint(ctx: HubContext, node_id: str, task_id: str, report: CheckpointReport) -> None:
    """Record a checkpoint the node uploaded: a new link of the task's chain, and kept work."""
    now = ctx.clock()
    task = held_task(ctx, node_id, task_id, report.attempt)
    if not ctx.blobs.exists(report.sha256):
        raise Rejected(f"checkpoint {report.sha256} was not uploaded", field="sha256")
    if report.prev_sha256 != task.last_checkpoint_sha:
        raise Conflict(
            f"checkpoint chain broken: it names {report.prev_sha256} as previous, "
            f"the chain ends at {task.last_checkpoint_sha}",
            field="prev_sha256",
        )
    chain = ctx.store.list_checkpoints(task_id)
    work = current_work(ctx, task)
    link = CheckpointLink(
        task_id=task_id,
        seq=len(chain) + 1,
        sha256=report.sha256,
        prev_sha256=report.prev_sha256,
        node_id=node_id,
        attempt=report.attempt,
        progress=report.progress,
        runtime_s=report.runtime_s,
        kept_s=max(0.0, report.runtime_s - work.kept_s),
        created_at=now,
    )
    work.kept_s = max(work.kept_s, report.runtime_s)
    task.last_checkpoint_sha = report.sha256
    task.progress = max(task.progress, report.progress)
    task.lease_expires_at = now + ctx.config.lease_timeout_s
    task.updated_at = now
    ctx.store.apply(Changes(tasks=[task], checkpoints=[link], work=[work]))
    escrow.settle_quietly(ctx, task.job_id)


def complete(ctx: HubContext, node_id: str, task_id: str, result: TaskComplete) -> Task:
    """The attempt ended: success if it exited 0 with every declared output, else a failure."""
    now = ctx.clock()
    task = held_task(ctx, node_id, task_id, result.attempt)
    job = ctx.store.get_job(task.job_id)
    error = result.error
    if error is None and result.exit_code != 0:
        error = f"exit code {result.exit_code}"
    if error is None:
        error = _output_problem(ctx, job.spec.outputs, result.outputs)
    work = attempt_work(ctx, task, result.runtime_s, completed=error is None)
    task.exit_code = result.exit_code
    task.lease_expires_at = None
    task.updated_at = now
    if error is None:
        task.state = next_task_state(task.state, TaskEvent.SUCCEED)
        task.outputs = dict(result.outputs)
        task.progress = 1.0
    else:
        event = fail_event(task, job.spec.retries)
        task.failures += 1
        task.state = next_task_state(task.state, event)
        task.error = error
    changes = Changes(tasks=[task], work=[work])
    settle_job(ctx, job, changes, now)
    ctx.store.apply(changes)
    escrow.settle_quietly(ctx, job.id)
    if task.state is TaskState.QUEUED:
        ctx.work.notify()
    return task


def _output_problem(ctx: HubContext, declared: list[str], outputs: dict[str, str]) -> str | None:
    for name in declared:
        if name not in outputs:
            return f"declared output {name!r} is missing"
    for name, sha256 in outputs.items():
        if name not in declared:
            return f"output {name!r} was not declared by the job"
        if not ctx.blobs.exists(sha256):
            return f"output {name!r} ({sha256}) was not uploaded"
    return None


def release(ctx: HubContext, node_id: str, task_id: str, body: TaskRelease) -> None:
    """The node gives the task back (draining): it requeues at once with its checkpoint."""
    task = held_task(ctx, node_id, task_id, body.attempt)
    requeue(ctx, task, TaskEvent.RELEASE, body.runtime_s, ctx.clock())
    ctx.work.notify()
