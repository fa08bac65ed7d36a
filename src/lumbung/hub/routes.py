"""The HTTP API under /v1. Handlers parse, check who asks, call the hub's logic, and answer.

A sync core behind an async edge: a handler that only calls the core is a plain ``def``, which
Starlette runs in its thread pool, so a slow store call or a big job stalls only its own request,
never the event loop (heartbeats included). Two handlers stay coroutines because they wait on the
network: the claim's long-poll (each attempt runs in a thread) and the streamed blob upload (its
writes run in threads).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from lumbung.errors import Rejected, TooLarge
from lumbung.hub import jobs, leases, reports, rounds
from lumbung.hub.auth import Actor, Ctx, PollingActor, RenewingActor
from lumbung.hub.capacity import Admission
from lumbung.hub.context import HubContext
from lumbung.hub.views import node_view
from lumbung.hub.write_limits import StreamWriter, Writer
from lumbung.ids import is_sha256_hex
from lumbung.wire.api import (
    Assignment,
    CheckpointReport,
    ClaimRequest,
    ClaimResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JobSubmit,
    JobSummary,
    JobView,
    LogChunk,
    LogLine,
    NodeRegister,
    NodeView,
    Plan,
    PlanRequest,
    Results,
    ResumeFailed,
    RoundInfo,
    RoundUpdateReport,
    SubmitResponse,
    TaskComplete,
    TaskRelease,
)
from lumbung.wire.fields import INT32_MAX, INT64_MAX

router = APIRouter(prefix="/v1")
# Path and query values reach SQL as they are: ids are id-shaped (no NUL byte, which PostgreSQL
# text cannot hold), numbers fit their columns, so a hostile one is a 422 naming it, not a 500.
_ID = r"^[A-Za-z0-9_]{1,64}$"
TaskPath = Annotated[str, Path(pattern=_ID)]
JobPath = Annotated[str, Path(pattern=_ID)]

# How often a waiting claim looks again when nothing in this process signalled new work
# (work submitted through another hub process sharing the database).
_CLAIM_POLL_S = 0.5
_BLOB_CHUNK_BYTES = 1024 * 1024


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


# --- nodes ------------------------------------------------------------------------------------


@router.post("/nodes/register")
def register_node(reg: NodeRegister, actor: Actor, ctx: Ctx) -> NodeView:
    leases.register_node(ctx, actor, reg)
    return node_view(ctx.node_snapshot(actor), ctx.store.node_streaks(actor))


@router.post("/nodes/heartbeat")
def heartbeat(beat: HeartbeatRequest, actor: RenewingActor, ctx: Ctx) -> HeartbeatResponse:
    return leases.heartbeat(ctx, actor, beat)


@router.get("/nodes")
def list_nodes(_: Actor, ctx: Ctx) -> list[NodeView]:
    return [node_view(s, ctx.store.node_streaks(s.node.id)) for s in ctx.snapshots(fresh=True)]


# --- tasks (node side) --------------------------------------------------------------------------


@router.post("/tasks/claim")
async def claim(
    body: ClaimRequest, request: Request, actor: PollingActor, ctx: Ctx
) -> ClaimResponse:
    """Long-poll: answer as soon as a task is leased to this node, or after ``wait_s``.

    Each attempt runs in a thread, holding a slot of the hub's capacity; between attempts the
    claim waits on the event loop for work, holding neither.
    """
    deadline = time.monotonic() + min(body.wait_s, ctx.config.claim_wait_max_s)
    first = True
    while True:
        if await request.is_disconnected():
            return ClaimResponse(assignment=None)  # never lease to a node that has hung up
        seen = ctx.work.generation
        assignment, done = None, False
        # Every claim looks for work at least once, however short its wait: a busy hub must
        # not answer "no work" to a node it never looked for (wait_s 0 would get that at once).
        slot_wait_s = ctx.config.claim_wait_max_s if first else deadline - time.monotonic()
        first = False
        if await ctx.capacity.enter(Admission.POLL, max(0.0, slot_wait_s)):
            try:
                assignment, done = await run_in_threadpool(_claim_attempt, ctx, actor)
            finally:
                ctx.capacity.leave()
        remaining = deadline - time.monotonic()
        if done or remaining <= 0:
            return ClaimResponse(assignment=assignment)
        await ctx.work.wait(min(remaining, _CLAIM_POLL_S), since=seen)


def _claim_attempt(ctx: HubContext, node_id: str) -> tuple[Assignment | None, bool]:
    """A lease for the node, or None; and whether the claim is answered now (leased, or the
    node drains and takes no more work)."""
    assignment = leases.claim(ctx, node_id)
    return assignment, assignment is not None or leases.is_draining(ctx, node_id)


@router.post("/tasks/{task_id}/logs", status_code=204)
def task_logs(task_id: TaskPath, chunk: LogChunk, actor: Actor, ctx: Ctx) -> None:
    reports.append_logs(ctx, actor, task_id, chunk)


@router.post("/tasks/{task_id}/checkpoints", status_code=204)
def task_checkpoint(task_id: TaskPath, report: CheckpointReport, actor: Actor, ctx: Ctx) -> None:
    reports.add_checkpoint(ctx, actor, task_id, report)


@router.post("/tasks/{task_id}/resume-failed", status_code=204)
def task_resume_failed(task_id: TaskPath, report: ResumeFailed, actor: Actor, ctx: Ctx) -> None:
    reports.resume_failed(ctx, actor, task_id, report)


@router.post("/tasks/{task_id}/complete", status_code=204)
def task_complete(task_id: TaskPath, result: TaskComplete, actor: Actor, ctx: Ctx) -> None:
    reports.complete(ctx, actor, task_id, result)


@router.get("/tasks/{task_id}/round")
def task_round(
    task_id: TaskPath, attempt: Annotated[int, Query(ge=1, le=INT32_MAX)], actor: Actor, ctx: Ctx
) -> RoundInfo:
    return rounds.round_info(ctx, actor, task_id, attempt)


@router.post("/tasks/{task_id}/rounds/{round_index}/update", status_code=204)
def task_round_update(
    task_id: TaskPath,
    round_index: Annotated[int, Path(ge=0, le=INT32_MAX)],
    report: RoundUpdateReport,
    actor: Actor,
    ctx: Ctx,
) -> None:
    rounds.submit_update(ctx, actor, task_id, round_index, report)


@router.post("/tasks/{task_id}/release", status_code=204)
def task_release(task_id: TaskPath, body: TaskRelease, actor: Actor, ctx: Ctx) -> None:
    reports.release(ctx, actor, task_id, body)


# --- jobs (consumer side) -----------------------------------------------------------------------


@router.post("/jobs", status_code=201)
def submit_job(body: JobSubmit, actor: Writer, ctx: Ctx) -> SubmitResponse:
    return jobs.submit(ctx, actor, body.spec, body.escrow)


@router.post("/jobs/plan")
def plan_job(body: PlanRequest, _: Actor, ctx: Ctx) -> Plan:
    return jobs.plan(ctx, body.spec)


@router.get("/jobs")
def list_jobs(actor: Actor, ctx: Ctx) -> list[JobSummary]:
    return jobs.list_jobs(ctx, actor)


@router.get("/jobs/{job_id}")
def get_job(job_id: JobPath, actor: Actor, ctx: Ctx) -> JobView:
    return jobs.get(ctx, actor, job_id)


@router.get("/jobs/{job_id}/logs")
def job_logs(
    job_id: JobPath, actor: Actor, ctx: Ctx, after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0
) -> list[LogLine]:
    return jobs.logs(ctx, actor, job_id, after)


@router.get("/jobs/{job_id}/results")
def job_results(job_id: JobPath, actor: Actor, ctx: Ctx) -> Results:
    return jobs.results(ctx, actor, job_id)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: JobPath, actor: Actor, ctx: Ctx) -> JobView:
    return jobs.cancel(ctx, actor, job_id)


# --- artifacts ----------------------------------------------------------------------------------


def _blob_name(sha256: str) -> str:
    if not is_sha256_hex(sha256):
        raise Rejected("artifact names are 64 lowercase hex digits (SHA-256)", field="sha256")
    return sha256


@router.put("/blobs/{sha256}", status_code=201)
async def put_blob(
    sha256: str,
    request: Request,
    _: StreamWriter,
    ctx: Ctx,
) -> dict[str, object]:
    """Stream an upload into the blob store; it is kept only if its bytes hash to its name.

    The bytes arrive on the event loop; they are hashed and written in the thread pool a MiB at
    a time, and the commit (an fsync) too, so a big upload never holds the loop for long.
    """
    name = _blob_name(sha256)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > ctx.config.max_blob_bytes:
        raise TooLarge(f"artifact over {ctx.config.max_blob_bytes} bytes", field="content-length")
    upload = await run_in_threadpool(ctx.blobs.begin, name, ctx.config.max_blob_bytes)
    try:
        pending: list[bytes] = []
        pending_bytes = 0
        async for chunk in request.stream():
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= _BLOB_CHUNK_BYTES:
                await run_in_threadpool(upload.write, b"".join(pending))
                pending, pending_bytes = [], 0
        if pending:
            await run_in_threadpool(upload.write, b"".join(pending))
        size_bytes = await run_in_threadpool(upload.commit)
    except BaseException:
        upload.abort()
        raise
    return {"sha256": name, "size_bytes": size_bytes}


@router.get("/blobs/{sha256}")
def get_blob(sha256: str, _: Actor, ctx: Ctx) -> StreamingResponse:
    name = _blob_name(sha256)
    size_bytes = ctx.blobs.size(name)
    handle = ctx.blobs.open(name)

    def chunks() -> Iterator[bytes]:
        with handle:
            yield from iter(lambda: handle.read(_BLOB_CHUNK_BYTES), b"")

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={"content-length": str(size_bytes)},
    )


@router.head("/blobs/{sha256}")
def head_blob(sha256: str, _: Actor, ctx: Ctx) -> Response:
    size_bytes = ctx.blobs.size(_blob_name(sha256))
    return Response(headers={"content-length": str(size_bytes)})
