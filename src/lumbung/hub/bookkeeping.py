"""Bookkeeping shared by every task transition: kept and lost work, and the job's own state.

Work is kept when a checkpoint records it or the task completes; the time since the last checkpoint
of an attempt that ends any other way is lost. The ledger pays kept work only.

Time is the hub's own: a node reports how long it ran, but an attempt is never counted as longer
than the hub's clock says its lease has been held (``measured_runtime_s``), so a node claiming an
hour after a second is paid for a second, and a claim of infinity or NaN never reaches settlement.
"""

from __future__ import annotations

import logging
import math

from lumbung.errors import NotFound, StaleWrite
from lumbung.hub.context import HubContext
from lumbung.market.model import PENDING_VERDICT, Job, JobState, Task, TaskState, Work
from lumbung.market.states import TERMINAL_JOB_STATES, TaskEvent, job_state_of, next_task_state
from lumbung.store.protocol import Changes

# Log lines quoted in a failed job's error.
_ERROR_LOG_LINES = 10
_RECOUNT_RACES = 16

log = logging.getLogger(__name__)


def work_record(task: Task, price_micro_per_hour: int) -> Work:
    """The (empty) work record of the attempt just leased."""
    assert task.node_id is not None
    return Work(
        job_id=task.job_id,
        task_id=task.id,
        attempt=task.attempt,
        node_id=task.node_id,
        price_micro_per_hour=price_micro_per_hour,
    )


def current_work(ctx: HubContext, task: Task) -> Work:
    try:
        return ctx.store.get_work(task.id, task.attempt)
    except NotFound:
        # A lease always writes its work record; only a store edited by hand lacks one.
        return work_record(task, 0)


def measured_runtime_s(task: Task, reported_s: float, now: float) -> float:
    """The seconds into the current attempt the hub counts for a report of ``reported_s``: what
    the node says, but never more than the lease has been held by the hub's clock.

    The wire refuses non-finite and absurd times; this holds even for one that got past it: NaN
    counts as nothing, infinity as the whole lease.
    """
    held_s = max(0.0, now - task.started_at) if task.started_at is not None else 0.0
    if math.isnan(reported_s):
        return 0.0
    return min(max(reported_s, 0.0), held_s)


def attempt_deadline(ctx: HubContext, task: Task, max_runtime_s: int) -> float:
    """When the current attempt is over its time limit: the job's ``max_runtime_s`` from the
    lease's start, plus the hub's grace for a node's own limit and its report to arrive."""
    started = task.started_at if task.started_at is not None else ctx.clock()
    return started + max_runtime_s + ctx.config.runtime_grace_s


def attempt_work(
    ctx: HubContext, task: Task, runtime_s: float, now: float, *, completed: bool
) -> Work:
    """The final work record of the task's current attempt, ending after ``runtime_s`` (as the
    node reports it; counted as at most the time the lease was held)."""
    runtime_s = measured_runtime_s(task, runtime_s, now)
    work = current_work(ctx, task)
    if completed:
        # Less what the attempt already lost while it ran (a training update screened out).
        work.kept_s = max(work.kept_s, runtime_s - work.lost_s)
    work.lost_s = max(0.0, runtime_s - work.kept_s)
    return work


def recount_job(ctx: HubContext, job_id: str) -> JobState:
    """The job's state counted again from its tasks as committed now, written if it moved; the
    state it is in afterwards.

    Tasks that stop running at once (the last two of a job completing together) each count the
    other as still running when they are written, so neither moves the job. The later of their
    commits is followed by a count that sees both, so calling this after every such commit ends
    the job. Writing the job row inside each of those transactions instead would serialise every
    completion of a big job on that one row. The escrow's reconcile calls it too, for a hub that
    stopped between a commit and its recount.
    """
    for _ in range(_RECOUNT_RACES):
        job = ctx.store.get_job(job_id)
        changes = Changes()
        update_job_state(ctx, job, changes, ctx.clock())
        if not changes.jobs:
            return job.state
        try:
            ctx.store.apply(changes)
            return job.state
        except StaleWrite:
            continue  # another writer moved the job or a task meanwhile: count again
    log.warning("job %s: its state lost every recount race; reconcile counts it again", job_id)
    return ctx.store.get_job(job_id).state


def update_job_state(ctx: HubContext, job: Job, changes: Changes, now: float) -> None:
    """Bring the job's state in line with its tasks as ``changes`` will leave them.

    Adds the job to ``changes`` when it moves; when a task has failed for good, the job fails and
    its other unfinished tasks are cancelled in the same transaction. Two tasks ending at once
    each count the other as unfinished, so a change that stops a task running is followed, once
    committed, by ``recount_job``.
    """
    if job.state in TERMINAL_JOB_STATES:
        return
    changed = {t.id: t for t in changes.tasks if t.job_id == job.id}
    # Counting in the store, not reading every task: a lease must not cost O(tasks in the job).
    counts = ctx.store.task_state_counts(job.id, excluding=list(changed))
    states = {s for s, n in counts.items() if n} | {t.state for t in changed.values()}
    state = job_state_of(states, cancelled=False)
    if state is JobState.SUCCEEDED and job.spec.verify.replicated:
        tasks = [changed.get(t.id, t) for t in ctx.store.list_tasks(job.id)]
        if any(t.verdict == PENDING_VERDICT for t in tasks):
            state = JobState.RUNNING  # a finished replica still waits for its verdict
    if state is JobState.FAILED:
        tasks = [changed.get(t.id, t) for t in ctx.store.list_tasks(job.id)]
        failed = next(t for t in tasks if t.state is TaskState.FAILED)
        job.error = _failure_message(ctx, job, failed)
        for task in tasks:
            if task.state in (TaskState.QUEUED, TaskState.RUNNING):
                task.state = next_task_state(task.state, TaskEvent.CANCEL)
                task.updated_at = now
                if task.id not in changed:
                    changes.tasks.append(task)
    if state is not job.state:
        job.state = state
        job.updated_at = now
        if state is not JobState.QUEUED:
            job.waiting_reason = None
        changes.jobs.append(job)


def _failure_message(ctx: HubContext, job: Job, task: Task) -> str:
    lines = [
        r.text.rstrip("\n") for r in ctx.store.tail_logs(task.id, task.attempt, _ERROR_LOG_LINES)
    ]
    tail = "\n".join(lines[-_ERROR_LOG_LINES:])
    head = (
        f"task {task.index} failed after {task.attempt} attempt(s) "
        f"(retries: {job.spec.retries}): {task.error or 'unknown error'}"
    )
    return f"{head}\nlast log lines:\n{tail}" if tail else head
