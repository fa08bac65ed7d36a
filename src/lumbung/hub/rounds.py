"""Training rounds on the hub: hand out the weights, take the workers' updates, close each round.

A ``train`` job's workers are its tasks, one per shard, leased like any task. Each round a worker
asks ``round_info`` what to do, downloads the round's weights (the full weights, or the compressed
change from the round before when it holds that), takes H inner steps, uploads its compressed
pseudo-gradient as a blob and reports it with ``submit_update``. A round closes when every
wanted worker has reported, when every worker still holding a lease has (a dead worker only
shrinks the round), or at its deadline with at least the minimum. The hub then screens the
updates against each other (``lumbung.verify.screening``: zeros, noise, sign flips, scaled
updates, copies of another worker's), averages those it keeps, applies the outer Nesterov step
with numpy (``lumbung.train.rounds.apply_round``; the hub never imports torch) and opens the
next round. An update's inner steps are kept (paid) work only once its round closes with it: one
screening left out is named in the round, with why, and its time is lost. Everything a round
needs is in the store and the blob store, so a hub restarted mid-round carries on.

Closing takes seconds for a large model with many workers, so it happens in the background
(``lumbung.hub.background``), never in the request that completed the round: that worker is
answered at once, and workers learn of the next round by asking ``round_info`` again.

Round 0 has no weights until the first worker sends its seeded initial weights with its update;
every worker initialises from the job's seed, so they all start from the same bits, which the
hub checks by hash.
"""

from __future__ import annotations

import contextlib
import logging
import statistics

import numpy as np

from lumbung.errors import (
    Conflict,
    Forbidden,
    LumbungError,
    NotFound,
    Rejected,
    StaleWrite,
    Unavailable,
)
from lumbung.hub import escrow
from lumbung.hub.bookkeeping import measured_runtime_s
from lumbung.hub.context import HubContext
from lumbung.hub.reports import held_task
from lumbung.market.model import Job, Round, RoundState, RoundUpdate, TaskState, Work
from lumbung.store.protocol import Changes
from lumbung.train.codec import HEADER, decode, encoded_size_bytes, peek_numel
from lumbung.train.rounds import (
    FULL_WEIGHTS,
    GlobalState,
    apply_round,
    decode_updates,
    full_weights,
)
from lumbung.train.spec import codec_config, outer_config
from lumbung.verify.screening import screen
from lumbung.wire.api import RoundInfo, RoundUpdateReport
from lumbung.wire.train import TrainSpec

log = logging.getLogger("lumbung.hub.rounds")

# Workers' updates to one round are serialised on the round's version; one that loses the race
# reads the round again. Several workers finishing at once each win within a few tries.
_UPDATE_ATTEMPTS = 8


def train_spec(job: Job) -> TrainSpec:
    if job.spec.train is None:
        raise Rejected(f"job {job.id} is not a train job", field="task_id")
    return job.spec.train


def round_info(ctx: HubContext, node_id: str, task_id: str, attempt: int) -> RoundInfo:
    """What the worker holding ``task_id`` should do now."""
    task = held_task(ctx, node_id, task_id, attempt)
    job = ctx.store.get_job(task.job_id)
    spec = train_spec(job)
    current = _current_round(ctx, job, spec)
    total = spec.total_rounds()
    if current.state is RoundState.CLOSED:
        state = "done"
    elif any(u.task_id == task_id for u in ctx.store.list_updates(job.id, current.index)):
        state = "submitted"
    else:
        state = "open"
    previous = ctx.store.get_round(job.id, current.index - 1) if current.index > 0 else None
    return RoundInfo(
        round=current.index,
        state=state,  # type: ignore[arg-type]
        rounds_total=total,
        deadline_at=current.deadline_at,
        base_sha=current.base_sha,
        change_sha=current.change_sha,
        previous_base_sha=previous.base_sha if previous is not None else None,
    )


def submit_update(
    ctx: HubContext, node_id: str, task_id: str, round_index: int, report: RoundUpdateReport
) -> None:
    """Take one worker's pseudo-gradient for ``round_index``; if that completes the round, it
    closes in the background (``close_soon``).

    Refused, with nothing written: a task not held by this node (403) or a stale attempt (409),
    a round that is not the open one (409, field ``round``), weights other than the round's
    (409, ``base_sha``), a blob never uploaded or not a valid update for this model (422,
    ``sha256``), a second update from the same task (409, ``round``), and an update that lost
    every race to other writers of the round (503, ``round``: send it again).
    """
    task = held_task(ctx, node_id, task_id, report.attempt)
    job = ctx.store.get_job(task.job_id)
    spec = train_spec(job)
    for attempt in range(_UPDATE_ATTEMPTS):
        try:
            _accept(ctx, job, spec, task.id, node_id, round_index, report)
            break
        except StaleWrite as exc:
            # Another worker's update (or the round's close) changed the round since it was
            # read: read it again, so an update never lands in a round that already closed.
            if attempt + 1 == _UPDATE_ATTEMPTS:
                # Nothing was written; a 409 would read as "round closed" and the worker would
                # drop its inner steps. 503: the worker's courier sends the same update again.
                raise Unavailable(
                    f"round {round_index} is busy with other workers' updates; send it again",
                    field="round",
                ) from exc
    escrow.settle_quietly(ctx, job.id)
    close_soon(ctx, job.id)


def close_soon(ctx: HubContext, job_id: str) -> None:
    """Close the job's round in the background if it is complete (``maybe_close``)."""
    ctx.background.submit(f"close the round of job {job_id}", lambda: maybe_close(ctx, job_id))


def _accept(
    ctx: HubContext,
    job: Job,
    spec: TrainSpec,
    task_id: str,
    node_id: str,
    round_index: int,
    report: RoundUpdateReport,
) -> None:
    current = _current_round(ctx, job, spec)
    if current.index != round_index or current.state is not RoundState.OPEN:
        raise Conflict(
            f"round {round_index} is not open; the current round is {current.index} "
            f"({current.state})",
            field="round",
        )
    # The round is written with the update (its version checked), even when nothing of it
    # changes: a close that read the round's updates before this one then fails, and retries.
    changes = Changes(rounds=[current])
    numel = _base_weights(ctx, current, report)
    _check_update_blob(ctx, report.sha256, numel)
    task = ctx.store.get_task(task_id)
    changes.updates.append(
        RoundUpdate(
            job_id=job.id,
            round_index=round_index,
            task_id=task_id,
            node_id=node_id,
            attempt=report.attempt,
            sha256=report.sha256,
            size_bytes=ctx.blobs.size(report.sha256),
            tokens=report.tokens,
            inner_steps=report.inner_steps,
            train_loss=report.train_loss,
            base_val_loss=report.base_val_loss,
            bytes_down=report.bytes_down,
            device=report.device,
            created_at=ctx.clock(),
            # Its inner steps become kept work when the round closes with it: as long as the
            # worker says, at most the lease held so far.
            runtime_s=measured_runtime_s(task, report.runtime_s, ctx.clock()),
        )
    )
    ctx.store.apply(changes)


def maybe_close(ctx: HubContext, job_id: str, *, deadline_passed: bool = False) -> bool:
    """Close the job's open round if it is complete (or due); True if this call closed it.

    Two hubs (or threads) closing the same round race on the round's version: one wins, the
    other's write is stale and it does nothing.
    """
    job = ctx.store.get_job(job_id)
    spec = train_spec(job)
    current = _current_round(ctx, job, spec)
    if current.state is not RoundState.OPEN:
        return False
    updates = ctx.store.list_updates(job_id, current.index)
    if not _complete(ctx, job_id, spec, updates, deadline_passed):
        if deadline_passed:
            _extend_deadline(ctx, current, spec, len(updates))
        return False
    try:
        _close(ctx, spec, current, updates)
    except StaleWrite:
        return False  # someone else closed it first
    return True


def close_due_rounds(ctx: HubContext) -> int:
    """Close (or extend) every open round past its deadline; returns how many closed."""
    closed = 0
    for due in ctx.store.rounds_due(ctx.clock()):
        try:
            closed += maybe_close(ctx, due.job_id, deadline_passed=True)
        except LumbungError:
            log.exception("closing round %d of job %s failed", due.index, due.job_id)
    return closed


def close_ready_rounds(ctx: HubContext) -> int:
    """Close every open round that is complete now, e.g. after a dead worker's lease expired."""
    closed = 0
    for open_round in ctx.store.rounds_due(float("inf")):
        try:
            closed += maybe_close(ctx, open_round.job_id)
        except LumbungError:
            log.exception("closing round %d of job %s failed", open_round.index, open_round.job_id)
    return closed


def check_resume(ctx: HubContext, owner: str, spec: TrainSpec) -> None:
    """A job resumed from another must name one of the owner's train jobs, of the same model
    and dataset, that got at least one round done; else nothing is submitted."""
    if spec.resume_from is None:
        return
    field = "spec.train.resume_from"
    try:
        source = ctx.store.get_job(spec.resume_from)
    except NotFound as exc:
        raise NotFound(f"no job {spec.resume_from} to resume from", field=field) from exc
    if source.owner != owner:
        raise Forbidden(f"job {source.id} belongs to another account", field=field)
    earlier = source.spec.train
    if earlier is None or (earlier.model, earlier.dataset) != (spec.model, spec.dataset):
        raise Rejected(
            f"job {source.id} did not train this model on this dataset: nothing to resume",
            field=field,
        )
    _resume_point(ctx, source.id, field)


def _resume_point(ctx: HubContext, job_id: str, field: str) -> Round:
    """The round of ``job_id`` to resume from: its newest, whose base holds every update so far."""
    try:
        latest = ctx.store.latest_round(job_id)
    except NotFound as exc:
        raise Rejected(f"job {job_id} finished no round to resume from", field=field) from exc
    if latest.index == 0 or latest.base_sha is None or latest.state_sha is None:
        raise Rejected(f"job {job_id} finished no round to resume from", field=field)
    return latest


def _current_round(ctx: HubContext, job: Job, spec: TrainSpec) -> Round:
    """The job's newest round; round 0 is made on first use (its deadline starts then). A job
    resumed from another starts round 0 from that job's last weights and outer momentum."""
    try:
        return ctx.store.latest_round(job.id)
    except NotFound:
        pass
    now = ctx.clock()
    first = Round(
        job_id=job.id,
        index=0,
        state=RoundState.OPEN,
        opened_at=now,
        deadline_at=now + spec.round_deadline_s,
    )
    if spec.resume_from is not None:
        source = _resume_point(ctx, spec.resume_from, "spec.train.resume_from")
        first.base_sha, first.state_sha = source.base_sha, source.state_sha
    with contextlib.suppress(Conflict):  # another request made it first
        ctx.store.apply(Changes(new_rounds=[first]))
    return ctx.store.latest_round(job.id)


def _base_weights(ctx: HubContext, current: Round, report: RoundUpdateReport) -> int:
    """Check the update was trained from the round's weights; returns their element count.

    In round 0 the first update's initial weights become the round's base (and the hub's first
    outer state); later round-0 updates must name the same initial weights.
    """
    if current.base_sha is not None:
        if report.base_sha != current.base_sha:
            raise Conflict(
                f"trained from {report.base_sha}, but round {current.index} starts from "
                f"{current.base_sha}",
                field="base_sha",
            )
        return _numel(ctx, current.base_sha)
    if report.initial_sha is None or report.initial_sha != report.base_sha:
        raise Rejected(
            "round 0 has no weights yet: send the seeded initial weights as initial_sha "
            "(and base_sha)",
            field="initial_sha",
        )
    initial = _read_vector(ctx, report.initial_sha, "initial_sha")
    state = GlobalState.start(initial)
    current.base_sha = report.initial_sha  # written with the update that brought it
    current.state_sha = ctx.blobs.put_bytes(state.to_bytes())
    return state.numel


def _check_update_blob(ctx: HubContext, sha256: str, numel: int) -> None:
    if not ctx.blobs.exists(sha256):
        raise Rejected(f"update {sha256} was not uploaded", field="sha256")
    try:
        decode(_read(ctx, sha256), numel)
    except Rejected as exc:
        raise Rejected(f"update {sha256}: {exc.message}", field="sha256") from exc


def _complete(
    ctx: HubContext,
    job_id: str,
    spec: TrainSpec,
    updates: list[RoundUpdate],
    deadline_passed: bool,
) -> bool:
    reported = {u.task_id for u in updates}
    if len(reported) >= spec.workers.wanted:
        return True
    if len(reported) < spec.workers.minimum:
        return False
    if deadline_passed:
        return True
    # Every worker that still holds a lease has reported: waiting longer waits for nobody.
    running = [t for t in ctx.store.list_tasks(job_id) if t.state is TaskState.RUNNING]
    return all(t.id in reported for t in running)


def _extend_deadline(ctx: HubContext, current: Round, spec: TrainSpec, reported: int) -> None:
    """Too few updates at the deadline: wait another deadline for re-leased workers."""
    log.info(
        "round %d of job %s has %d of at least %d updates at its deadline; waiting longer",
        current.index,
        current.job_id,
        reported,
        spec.workers.minimum,
    )
    current.deadline_at = ctx.clock() + spec.round_deadline_s
    with contextlib.suppress(StaleWrite):  # closed or extended meanwhile
        ctx.store.apply(Changes(rounds=[current]))


def _close(ctx: HubContext, spec: TrainSpec, current: Round, updates: list[RoundUpdate]) -> None:
    if current.state_sha is None:
        raise AssertionError("an open round with updates always has its outer state")
    now = ctx.clock()
    state = GlobalState.from_bytes(_read(ctx, current.state_sha))
    outer, codec = outer_config(spec.outer), codec_config(spec.compression)
    deltas = decode_updates(state, [_read(ctx, u.sha256) for u in updates])
    verdicts = screen([(u.task_id, delta) for u, delta in zip(updates, deltas, strict=True)])
    screened = {v.worker: v.reason for v in verdicts if v.reason is not None}
    kept = [u for u in updates if u.task_id not in screened]
    aggregated = [d for u, d in zip(updates, deltas, strict=True) if u.task_id not in screened]
    closed = apply_round(state, aggregated, outer, codec)
    del deltas, aggregated  # a large model's updates: free them before the blobs are written
    next_state = closed.state
    base_sha = ctx.blobs.put_bytes(full_weights(next_state))
    change_sha = ctx.blobs.put_bytes(closed.change)
    state_sha = ctx.blobs.put_bytes(next_state.to_bytes())
    current.state = RoundState.CLOSED
    current.closed_at = now
    current.participants = len(kept)
    current.screened = screened
    current.metrics = _metrics(current, kept, now)
    current.metrics["screened_out"] = float(len(screened))
    final = current.index + 1 >= spec.total_rounds()
    following = Round(
        job_id=current.job_id,
        index=current.index + 1,
        # The round after the last is closed from the start: its base is the trained model.
        state=RoundState.CLOSED if final else RoundState.OPEN,
        opened_at=now,
        deadline_at=now + spec.round_deadline_s,
        base_sha=base_sha,
        change_sha=change_sha,
        state_sha=state_sha,
        closed_at=now if final else None,
    )
    changes = Changes(
        rounds=[current], new_rounds=[following], work=_round_work(ctx, updates, screened)
    )
    ctx.store.apply(changes)
    for task_id, reason in screened.items():
        log.warning(
            "job %s round %d left out the update of task %s: %s",
            current.job_id,
            current.index,
            task_id,
            reason,
        )
    log.info(
        "job %s round %d closed with %d update(s)%s",
        current.job_id,
        current.index,
        len(kept),
        "; training done" if final else "",
    )
    escrow.settle_quietly(ctx, current.job_id)


def _round_work(
    ctx: HubContext, updates: list[RoundUpdate], screened: dict[str, str]
) -> list[Work]:
    """The work records of the round's workers: an aggregated update keeps the inner steps it
    reports; one screening left out loses them, so neither it nor a later update pays for them.

    ``lost_s`` of an attempt still running is the time it already lost: what a later update
    keeps is its runtime less that (the attempt's end counts ``lost_s`` again from its runtime).
    """
    records = []
    for update in updates:
        try:
            work = ctx.store.get_work(update.task_id, update.attempt)
        except NotFound:
            continue  # a store edited by hand: nothing to pay
        if update.task_id in screened:
            work.lost_s += max(0.0, update.runtime_s - work.kept_s - work.lost_s)
        else:
            work.kept_s = max(work.kept_s, update.runtime_s - work.lost_s)
        records.append(work)
    return records


def _metrics(current: Round, updates: list[RoundUpdate], now: float) -> dict[str, float]:
    val = [u.base_val_loss for u in updates if u.base_val_loss is not None]
    metrics = {
        "tokens": float(sum(u.tokens for u in updates)),
        "bytes_up": float(sum(u.size_bytes for u in updates)),
        "bytes_down": float(sum(u.bytes_down for u in updates)),
        "duration_s": now - current.opened_at,
    }
    if updates:  # none when screening left every update out
        metrics["train_loss"] = statistics.fmean(u.train_loss for u in updates)
    if val:
        metrics["base_val_loss"] = statistics.fmean(val)
    return metrics


def _numel(ctx: HubContext, sha256: str) -> int:
    with ctx.blobs.open(sha256) as f:
        return peek_numel(f.read(HEADER.size))  # the hub's own blob: only its header is read


def _read(ctx: HubContext, sha256: str) -> bytes:
    with ctx.blobs.open(sha256) as f:
        return f.read()


def _read_vector(ctx: HubContext, sha256: str, field: str) -> np.ndarray:
    if not ctx.blobs.exists(sha256):
        raise Rejected(f"{sha256} was not uploaded", field=field)
    blob = _read(ctx, sha256)
    try:
        values = decode(blob, peek_numel(blob))
    except Rejected as exc:
        raise Rejected(f"{field}: {exc.message}", field=field) from exc
    if len(blob) != encoded_size_bytes(values.size, FULL_WEIGHTS):
        raise Rejected("initial weights must be sent whole (codec none)", field=field)
    return values
