"""The consumer's side: submit, plan, cancel, and the views of jobs, logs and results.

A consumer sees and changes only its own jobs (403 otherwise).
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from lumbung.errors import Conflict, Forbidden, NotFound, Rejected
from lumbung.hub import escrow, rounds, unreadable
from lumbung.hub.bookkeeping import current_work
from lumbung.hub.context import HubContext
from lumbung.hub.views import job_view
from lumbung.market.fanout import tasks_for, validate_command_placeholders
from lumbung.market.model import Job, JobState, TaskState
from lumbung.market.plan import make_plan, waiting_reason
from lumbung.market.states import TERMINAL_JOB_STATES, TaskEvent, next_task_state
from lumbung.store.protocol import Changes, UnreadableJob
from lumbung.wire.api import JobSummary, JobView, LogLine, Plan, Results, SubmitResponse, TaskResult
from lumbung.wire.spec import JobSpec, rejected_from_validation

log = logging.getLogger("lumbung.hub.jobs")

_MAX_LOG_LINES = 1000


def _check_inputs(ctx: HubContext, spec: JobSpec) -> None:
    for i, item in enumerate(spec.inputs):
        if item.sha256 is None:
            raise Rejected(
                "local paths are uploaded by the client; the hub needs the artifact's sha256",
                field=f"spec.inputs.{i}.sha256",
            )


def _check_dataset(ctx: HubContext, spec: JobSpec) -> None:
    dataset = spec.train.dataset if spec.train is not None else None
    if dataset is None or dataset.name != "text":
        return
    if dataset.sha256 is None:
        raise Rejected(
            "a local dataset path is uploaded by the client; the hub needs its sha256",
            field="spec.train.dataset.sha256",
        )


def plan(ctx: HubContext, spec: JobSpec) -> Plan:
    validate_command_placeholders(spec)
    _check_inputs(ctx, spec)
    _check_dataset(ctx, spec)
    return make_plan(spec, ctx.snapshots())


def submit(ctx: HubContext, owner: str, spec: JobSpec, escrow_leaf: str) -> SubmitResponse:
    """Validate, plan, lock the escrow, then store the job and its tasks.

    A job nothing can run yet is stored and waits, saying why. Whatever can refuse the job does
    so before the lock (a short balance, a spec that would not read back from the store); if
    anything fails after it, the submission is withdrawn (``_withdraw``), so a consumer told that
    its submission failed has no job running and nothing locked.
    """
    signed = escrow.decode_escrow(escrow_leaf)
    the_plan = plan(ctx, spec)
    _check_reads_back(spec)
    if spec.train is not None:
        rounds.check_resume(ctx, owner, spec.train)
        dataset = spec.train.dataset.sha256
        if dataset is not None and not ctx.blobs.exists(dataset):
            raise Rejected(
                f"dataset {dataset} has not been uploaded", field="spec.train.dataset.sha256"
            )
    for i, item in enumerate(spec.inputs):
        if item.sha256 is not None and not ctx.blobs.exists(item.sha256):
            raise Rejected(
                f"input {item.name!r} ({item.sha256}) has not been uploaded",
                field=f"spec.inputs.{i}.sha256",
            )
    job_id = escrow.lock(ctx, owner, spec, signed)
    now = ctx.clock()
    job = Job(
        id=job_id,
        owner=owner,
        name=spec.name,
        spec=spec,
        state=JobState.QUEUED,
        created_at=now,
        updated_at=now,
        waiting_reason=waiting_reason(the_plan),
    )
    try:
        ctx.store.create_job(job, tasks_for(job.id, spec, now))
        view = job_view(ctx, job)  # from the job in hand: reading it back could only fail
    except BaseException as exc:
        _withdraw(ctx, job.id, exc)
        raise
    ctx.work.notify()
    return SubmitResponse(job=view, plan=the_plan)


def _check_reads_back(spec: JobSpec) -> None:
    """The store keeps the spec as its JSON and every claim reads it back: a spec that would not
    read back as itself (a NaN is written as null) is refused now, before its escrow is locked,
    not found unreadable once the job is stored."""
    try:
        again = JobSpec.model_validate_json(spec.model_dump_json())
    except ValidationError as exc:
        first = rejected_from_validation(exc)
        raise Rejected(
            f"spec.{first.message} (the spec would not read back from the store)",
            field=f"spec.{first.field}",
        ) from exc
    if again != spec:
        raise Rejected("the spec would not read back from the store as itself", field="spec")


def _withdraw(ctx: HubContext, job_id: str, exc: BaseException) -> None:
    """Undo a submission that failed after its escrow was locked. A job stored by then fails,
    its tasks cancelled, and its escrow is settled (refunded: nothing ran); a lock without a job
    is refunded. Never raises: the submission's own error is what its consumer must see."""
    error = f"its submission failed after the job was stored ({type(exc).__name__})"
    try:
        ctx.store.fail_job(job_id, error, ctx.clock())
    except NotFound:
        escrow.undo_lock(ctx, job_id)
        return
    except Exception:
        log.exception("could not withdraw job %s; reconcile settles its escrow", job_id)
        return
    escrow.settle_quietly(ctx, job_id)


def _own_job(ctx: HubContext, owner: str, job_id: str) -> Job:
    try:
        job = ctx.store.get_job(job_id)
    except UnreadableJob as exc:
        if exc.owner != owner:
            raise Forbidden(f"job {job_id} belongs to another account", field="job_id") from exc
        unreadable.isolate(ctx, exc)
        raise Conflict(
            f"{exc.message}; the hub failed it, cancelled its unfinished tasks and settled its "
            "escrow",
            field="job_id",
        ) from exc
    if job.owner != owner:
        raise Forbidden(f"job {job_id} belongs to another account", field="job_id")
    return job


def get(ctx: HubContext, owner: str, job_id: str) -> JobView:
    job = _own_job(ctx, owner, job_id)
    if job.state is JobState.QUEUED:
        job.waiting_reason = waiting_reason(make_plan(job.spec, ctx.snapshots()))
    return job_view(ctx, job)


def list_jobs(ctx: HubContext, owner: str) -> list[JobSummary]:
    summaries = []
    every_count = ctx.store.owner_task_counts(owner)  # one read, not one per job
    for job in ctx.store.list_jobs(owner):
        counts = {state.value: n for state, n in every_count.get(job.id, {}).items()}
        summaries.append(
            JobSummary(
                id=job.id,
                name=job.name,
                state=job.state.value,
                created_at=job.created_at,
                task_states=counts,
            )
        )
    return summaries


def cancel(ctx: HubContext, owner: str, job_id: str) -> JobView:
    """Cancel every unfinished task; nodes hear of it in their next heartbeat and kill the task."""
    job = _own_job(ctx, owner, job_id)
    if job.state in TERMINAL_JOB_STATES:
        raise Conflict(f"job {job_id} already {job.state}", field="job_id")
    now = ctx.clock()
    changes = Changes()
    for task in ctx.store.list_tasks(job_id):
        if task.state in (TaskState.QUEUED, TaskState.RUNNING):
            if task.state is TaskState.RUNNING:
                work = current_work(ctx, task)
                heard = (task.lease_expires_at or now) - ctx.config.lease_timeout_s
                work.lost_s = max(0.0, heard - (task.started_at or heard) - work.kept_s)
                changes.work.append(work)
            task.state = next_task_state(task.state, TaskEvent.CANCEL)
            task.lease_expires_at = None
            task.updated_at = now
            changes.tasks.append(task)
    job.state = JobState.CANCELLED
    job.updated_at = now
    job.waiting_reason = None
    changes.jobs.append(job)
    ctx.store.apply(changes)
    escrow.settle_quietly(ctx, job.id)
    return job_view(ctx, job)


def logs(ctx: HubContext, owner: str, job_id: str, after_seq: int) -> list[LogLine]:
    _own_job(ctx, owner, job_id)
    return [
        LogLine(
            seq=r.seq, task_id=r.task_id, attempt=r.attempt, stream=r.stream, text=r.text, at=r.at
        )
        for r in ctx.store.list_logs(job_id, after_seq, _MAX_LOG_LINES)
    ]


def results(ctx: HubContext, owner: str, job_id: str) -> Results:
    job = _own_job(ctx, owner, job_id)
    return Results(
        job_id=job.id,
        state=job.state.value,
        tasks=[
            TaskResult(
                task_id=t.id,
                index=t.index,
                params=t.params,
                state=t.state.value,
                node_id=t.node_id,
                exit_code=t.exit_code,
                outputs=t.outputs,
                replica=t.replica,
                verdict=t.verdict,
            )
            for t in ctx.store.list_tasks(job_id)
        ],
    )
