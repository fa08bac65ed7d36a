"""What a node reports about a task it holds: logs, checkpoints, completion, release.

Every report names the attempt; a node may report only on a task leased to it (403 otherwise) and
only on the attempt it holds (409 for a stale one, e.g. after its lease expired and the task moved,
or once the attempt is past its time limit). A report that keeps losing races to other writes of
its task (heartbeats renew the same row) is answered 503: nothing was written, send it again.

Nothing a node reports is taken on trust: the times it reports count for at most how long the
hub's clock says it held the lease (``lumbung.hub.bookkeeping.measured_runtime_s``), and a
checkpoint joins the chain only if it is an archive the next node can safely unpack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from lumbung.errors import Conflict, Forbidden, LumbungError, Rejected, StaleWrite, Unavailable
from lumbung.hub import commitments, escrow, replication
from lumbung.hub.bookkeeping import (
    attempt_deadline,
    attempt_work,
    current_work,
    measured_runtime_s,
    recount_job,
    update_job_state,
)
from lumbung.hub.context import HubContext
from lumbung.hub.leases import lease_end, requeue
from lumbung.market.chain import live_chain
from lumbung.market.model import PENDING_VERDICT, CheckpointLink, LogRecord, Task, TaskState, Work
from lumbung.market.states import TaskEvent, fail_event, next_task_state
from lumbung.store.protocol import Changes
from lumbung.wire.api import (
    CheckpointReport,
    LogChunk,
    ResumeFailed,
    TaskComplete,
    TaskRelease,
)
from lumbung.wire.archive import inspect_archive
from lumbung.wire.spec import JobSpec

_TRUNCATED_NOTE = "[log truncated by the hub: over the per-attempt limit]\n"
_GIB = 1024**3
# How often a report is read and applied again after losing a race before the node is told to
# send it again (503). Heartbeats renew the very task row a report writes, so a race or two is
# routine while a node reports; sixteen in a row means the row is hot for another reason.
_REPORT_RACES = 16

P = ParamSpec("P")
R = TypeVar("R")


def _rereads(report: Callable[P, R]) -> Callable[P, R]:
    """``report`` run again from its first read whenever its write lost an optimistic race.

    Handlers run at once, so a node's heartbeat can renew a task between its own log or
    checkpoint report reading the task and writing it; the store then refuses the write
    (``StaleWrite``) and nothing of it is kept. That is not a lost lease, and a 409 would make
    the node drop a healthy task. Each try reads the task afresh, so a lease that really did
    end meanwhile is still refused with its own 403 or 409.
    """

    @functools.wraps(report)
    def raced(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, _REPORT_RACES + 1):
            try:
                return report(*args, **kwargs)
            except StaleWrite as exc:
                if attempt == _REPORT_RACES:
                    raise Unavailable(f"{exc.message}; send the report again") from exc
        raise AssertionError("unreachable: the last race lost raises")

    return raced


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
    limit_s = ctx.spec_of(task.job_id).max_runtime_s
    if ctx.clock() >= attempt_deadline(ctx, task, limit_s):
        raise Conflict(
            f"attempt {attempt} of task {task_id} is past its time limit of {limit_s} s",
            field="attempt",
        )
    return task


@_rereads
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


@_rereads
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
    spec = ctx.spec_of(task.job_id)
    _check_archive(ctx, report, spec)
    chain = ctx.store.list_checkpoints(task_id)
    work = current_work(ctx, task)
    # Kept time is the hub's: at most the lease held so far, less what this attempt already kept.
    runtime_s = measured_runtime_s(task, report.runtime_s, now)
    link = CheckpointLink(
        task_id=task_id,
        seq=len(chain) + 1,
        sha256=report.sha256,
        prev_sha256=report.prev_sha256,
        node_id=node_id,
        attempt=report.attempt,
        progress=report.progress,
        runtime_s=runtime_s,
        kept_s=max(0.0, runtime_s - work.kept_s),
        created_at=now,
    )
    work.kept_s = max(work.kept_s, runtime_s)
    task.last_checkpoint_sha = report.sha256
    task.progress = max(task.progress, report.progress)
    task.lease_expires_at = lease_end(ctx, task, spec, now)
    task.updated_at = now
    ctx.store.apply(Changes(tasks=[task], checkpoints=[link], work=[work]))
    escrow.settle_quietly(ctx, task.job_id)


def _check_archive(ctx: HubContext, report: CheckpointReport, spec: JobSpec) -> None:
    """Refuse a checkpoint the next node could not safely unpack: not a tar.gz, a link or an
    unsafe path in it, too many entries, or more unpacked bytes than the job's disk budget."""
    size_bytes = ctx.blobs.size(report.sha256)
    if size_bytes != report.size_bytes:
        raise Rejected(
            f"checkpoint {report.sha256} is {size_bytes} bytes, not {report.size_bytes}",
            field="size_bytes",
        )
    try:
        with ctx.blobs.open(report.sha256) as stream:
            inspect_archive(stream, max_bytes=int(spec.resources.disk_gb * _GIB))
    except Rejected as exc:
        raise Rejected(f"checkpoint {report.sha256}: {exc.message}", field="sha256") from exc


@_rereads
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
    replicated = job.spec.verify.replicated
    committed = None
    if error is None:
        committed = commitments.checked(task, node_id, result, required=replicated)
    work = attempt_work(ctx, task, result.runtime_s, now, completed=error is None)
    task.exit_code = result.exit_code
    task.lease_expires_at = None
    task.updated_at = now
    if error is None:
        task.state = next_task_state(task.state, TaskEvent.SUCCEED)
        task.outputs = dict(result.outputs)
        task.progress = 1.0
        if result.commitment is not None:
            task.execution_class = result.commitment.execution_class.digest()
        if replicated:
            task.verdict = PENDING_VERDICT  # paid, or not, once judged
    else:
        event = fail_event(task, job.spec.retries)
        task.failures += 1
        task.state = next_task_state(task.state, event)
        task.error = error
    changes = Changes(tasks=[task], work=[work])
    update_job_state(ctx, job, changes, now)
    ctx.store.apply(changes)
    if committed is not None:
        commitments.record(ctx, committed)  # in the log before any verdict on it
    if task.state is TaskState.SUCCEEDED and replicated:
        replication.judge(ctx, job.id, task.index)  # before the recount: it may add replicas
    recount_job(ctx, job.id)
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


@_rereads
def release(ctx: HubContext, node_id: str, task_id: str, body: TaskRelease) -> None:
    """The node gives the task back (draining): it requeues at once with its checkpoint."""
    task = held_task(ctx, node_id, task_id, body.attempt)
    requeue(ctx, task, TaskEvent.RELEASE, body.runtime_s, ctx.clock())
    ctx.work.notify()


@_rereads
def resume_failed(ctx: HubContext, node_id: str, task_id: str, report: ResumeFailed) -> None:
    """The node could not restore ``report.failed`` and resumed from ``report.resumed_from``:
    the chain's end moves back there, the failed links are rejected, and the time they kept is
    taken out of the kept work of the attempts that made them, so settlement does not pay it.

    Settlement pays what kept work earned less what was already released, so time a rejected
    link kept that was already paid to its provider is not clawed back: it offsets what that
    provider earns on the same task later. Refused, with nothing written: ``resumed_from`` not
    a link of the chain (422), a failed link not in the chain after ``resumed_from`` (422,
    ``failed.N``), or one already rejected (409).
    """
    now = ctx.clock()
    task = held_task(ctx, node_id, task_id, report.attempt)
    links = ctx.store.list_checkpoints(task_id)
    chain = live_chain(links, task.last_checkpoint_sha)
    newer, resumed = _split_at(chain, report.resumed_from)
    by_sha: dict[str, CheckpointLink] = {}
    for link in newer:
        by_sha.setdefault(link.sha256, link)
    rejected: list[CheckpointLink] = []
    for i, sha256 in enumerate(report.failed):
        if sha256 not in by_sha:
            raise _failed_link_refusal(task_id, links, sha256, f"failed.{i}")
        reason = report.reason or "could not be restored"
        rejected.append(dataclasses.replace(by_sha.pop(sha256), rejected=reason))
    task.last_checkpoint_sha = report.resumed_from
    task.progress = resumed.progress if resumed is not None else 0.0
    task.updated_at = now
    work = _unkeep(ctx, task, rejected)
    ctx.store.apply(Changes(tasks=[task], rejected_checkpoints=rejected, work=work))
    escrow.settle_quietly(ctx, task.job_id)


def _split_at(
    chain: list[CheckpointLink], resumed_from: str | None
) -> tuple[list[CheckpointLink], CheckpointLink | None]:
    """The links of ``chain`` (newest first) newer than the one ``resumed_from`` names, and
    that link (None for a fresh start)."""
    if resumed_from is None:
        return chain, None
    for i, link in enumerate(chain):
        if link.sha256 == resumed_from:
            return chain[:i], link
    raise Rejected(
        f"{resumed_from} is not a link of the task's checkpoint chain", field="resumed_from"
    )


def _failed_link_refusal(
    task_id: str, links: list[CheckpointLink], sha256: str, field: str
) -> LumbungError:
    """Why ``sha256`` cannot be a failed link: rejected before (409), or not one to fall back
    past (422)."""
    if any(link.sha256 == sha256 and link.rejected is not None for link in links):
        return Conflict(f"checkpoint {sha256} of task {task_id} was already rejected", field=field)
    return Rejected(
        f"{sha256} is not a link of task {task_id}'s checkpoint chain after resumed_from",
        field=field,
    )


def _unkeep(ctx: HubContext, task: Task, rejected: list[CheckpointLink]) -> list[Work]:
    """The work records of the attempts that made ``rejected``, with the time those links kept
    moved from kept to lost: work no node can resume from is work lost."""
    records: dict[int, Work] = {}
    for link in rejected:
        work = records.get(link.attempt)
        if work is None:
            work = records[link.attempt] = ctx.store.get_work(task.id, link.attempt)
        taken_s = min(link.kept_s, work.kept_s)
        work.kept_s -= taken_s
        work.lost_s += taken_s
    return list(records.values())
