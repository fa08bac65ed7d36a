"""The node's side of the market: registration, heartbeats, claims and lease expiry.

A claim leases the best queued task this node may take (``market.matching.choose_task``); the lease
lives while heartbeats renew it. A lease that runs out returns its task to the queue with its last
checkpoint, and the time since that checkpoint is booked as lost work.

A lease never outlives its attempt's time limit (``attempt_deadline``: the job's max_runtime_s
plus the hub's grace), whatever a node does: renewals stop there, and the reaper ends a lease
that reached it as a timed-out, failed attempt, the same as the node's own time limit would.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import replace

from lumbung.errors import NotFound, StaleWrite
from lumbung.hub import escrow
from lumbung.hub.bookkeeping import (
    attempt_deadline,
    attempt_work,
    recount_job,
    update_job_state,
    work_record,
)
from lumbung.hub.context import HubContext
from lumbung.hub.unreadable import readable_spec
from lumbung.market.chain import live_chain
from lumbung.market.fanout import render_command
from lumbung.market.matching import (
    NodeSnapshot,
    choose_task,
    exclusions,
    task_price_micro_per_hour,
)
from lumbung.market.model import Job, Node, Task, TaskState
from lumbung.market.states import TERMINAL_JOB_STATES, TaskEvent, fail_event, next_task_state
from lumbung.store.protocol import Changes
from lumbung.wire.api import Assignment, HeartbeatRequest, HeartbeatResponse, NodeRegister
from lumbung.wire.spec import JobSpec

# How many queued tasks a claim looks at, oldest first, and how many it reads at a time: most
# claims take one of the first few, so reading the whole window each time would be waste.
_CLAIM_WINDOW = 256
_CLAIM_PAGE = 16
# Attempts a task may lose to vanished nodes before it fails (see ``requeue``).
MAX_LOST_LEASES = 10
# Attempts at a claim when another node or hub takes the chosen task first: each loss is another
# claim's lease, and a claim answered "no work" while work waits leaves a node idle a whole poll.
_CLAIM_RACES = 16
# Earlier links of a task's checkpoint chain a resuming node may fall back to (Assignment).
_RESUME_CHAIN_LINKS = 8


def register_node(ctx: HubContext, node_id: str, reg: NodeRegister) -> Node:
    now = ctx.clock()
    try:
        old = ctx.store.get_node(node_id)
        registered_at, version = old.registered_at, old.version
    except NotFound:
        registered_at, version = now, 0
    node = Node(
        id=node_id,
        name=reg.name,
        inventory=reg.inventory,
        price_micro_per_gpu_hour=reg.price_micro_per_gpu_hour,
        price_micro_per_cpu_hour=reg.price_micro_per_cpu_hour,
        slots=reg.slots,
        free_slots=reg.slots,
        draining=False,
        registered_at=registered_at,
        last_heartbeat_at=now,
        version=version,
    )
    ctx.store.put_node(node)
    ctx.store.record_heartbeat(node_id, now, reg.slots, False)
    ctx.work.notify()
    return node


def heartbeat(ctx: HubContext, node_id: str, beat: HeartbeatRequest) -> HeartbeatResponse:
    """Renew the leases the node still holds; tell it which of its tasks to stop."""
    now = ctx.clock()
    # NotFound tells a node that the hub forgot it: re-register.
    ctx.store.record_heartbeat(node_id, now, beat.free_slots, beat.draining)
    renewed: list[str] = []
    cancel: list[str] = []
    for report in beat.tasks:
        if _renew(ctx, node_id, report.task_id, report.attempt, report.progress, now):
            renewed.append(report.task_id)
        else:
            cancel.append(report.task_id)
    return HeartbeatResponse(
        renewed=renewed, cancel=cancel, lease_timeout_s=ctx.config.lease_timeout_s
    )


def _renew(
    ctx: HubContext, node_id: str, task_id: str, attempt: int, progress: float, now: float
) -> bool:
    for _ in range(_CLAIM_RACES):
        try:
            task = ctx.store.get_task(task_id)
        except NotFound:
            return False
        holds = task.state is TaskState.RUNNING and task.node_id == node_id
        if not holds or task.attempt != attempt:
            return False
        spec = readable_spec(ctx, task.job_id)
        if spec is None or now >= attempt_deadline(ctx, task, spec.max_runtime_s):
            return False  # a job failed for good, or over its time limit (the reaper ends it)
        task.lease_expires_at = lease_end(ctx, task, spec, now)
        task.progress = max(task.progress, progress)
        task.updated_at = now
        try:
            ctx.store.apply(Changes(tasks=[task]))
            return True
        except StaleWrite:
            continue
    return True  # lost every race to other writers of this task, which still holds its lease


def is_draining(ctx: HubContext, node_id: str) -> bool:
    """A draining node takes no more work; its waiting claim is answered at once."""
    return ctx.store.get_node(node_id).draining


def claim(ctx: HubContext, node_id: str) -> Assignment | None:
    """Lease the best task this node may run now, or None."""
    now = ctx.clock()
    node = ctx.store.get_node(node_id)  # NotFound: the node must register (again)
    if node.draining or len(ctx.store.running_tasks(node_id)) >= node.slots:
        return None
    snapshots = ctx.snapshots()
    cached = next((s for s in snapshots if s.node.id == node_id), None)
    me = replace(cached, node=node) if cached else ctx.node_snapshot(node_id)
    others = [s for s in snapshots if s.node.id != node_id]
    # Claims in this process choose and lease one at a time: at once they would all choose the
    # same oldest task, and every loser's reads and write are wasted (measured: on SQLite that
    # cost more than half the hub's CPU per task). The store's optimistic check still decides
    # races with other hub processes.
    with ctx.claim_lock:
        return _lease_first(ctx, node, me, others, now)


def _lease_first(
    ctx: HubContext, node: Node, me: NodeSnapshot, others: list[NodeSnapshot], now: float
) -> Assignment | None:
    for lost in range(_CLAIM_RACES):
        # Claims at once all choose the same oldest task and one wins each race; a claim that
        # lost takes one of the next few instead, so that those still racing spread out.
        chosen = _choose(ctx, me, others, now, skip=random.randrange(min(lost, _CLAIM_PAGE) + 1))  # noqa: S311
        if chosen is None:
            return None
        try:
            return _lease(ctx, node, chosen, ctx.store.get_job(chosen.job_id), now)
        except StaleWrite:
            continue  # another claim leased it first; look again
    return None


def _choose(
    ctx: HubContext, me: NodeSnapshot, others: list[NodeSnapshot], now: float, skip: int = 0
) -> Task | None:
    """The first queued task this node should take, reading the queue a page at a time; with
    ``skip``, the one that many after it on the same page (or the page's last it may take)."""
    for offset in range(0, _CLAIM_WINDOW, _CLAIM_PAGE):
        queued = ctx.store.queued_tasks(_CLAIM_PAGE, offset)
        pairs = [
            (t, spec)
            for t in queued
            # None: a job that cannot be read back, isolated now so the others go on
            if (spec := readable_spec(ctx, t.job_id)) is not None
            and not _retry_elsewhere(t, spec, me.node.id, others)
        ]
        chosen = _first_allowed(ctx, me, pairs, others, now)
        for _ in range(skip):
            if chosen is None:
                break
            pairs = [pair for pair in pairs if pair[0] is not chosen]
            chosen = _first_allowed(ctx, me, pairs, others, now) or chosen
        if chosen is not None or len(queued) < _CLAIM_PAGE:
            return chosen
    return None


def _first_allowed(
    ctx: HubContext,
    me: NodeSnapshot,
    pairs: list[tuple[Task, JobSpec]],
    others: list[NodeSnapshot],
    now: float,
) -> Task | None:
    """``choose_task``'s pick, passing over replicas this node may not take now: asked only of
    the task that would be chosen, since each costs a read of the task's replicas."""
    while True:
        chosen = choose_task(me, pairs, others, now, ctx.config.cheaper_node_grace_s)
        if chosen is None:
            return None
        spec = next(spec for task, spec in pairs if task is chosen)
        if _replica_drawn(ctx, chosen, spec, me.node.id, others):
            return chosen
        pairs = [pair for pair in pairs if pair[0] is not chosen]


def _retry_elsewhere(task: Task, spec: JobSpec, node_id: str, others: list[NodeSnapshot]) -> bool:
    """A task that failed on this node goes to another node, if one that can run it is free now."""
    if task.failures == 0 or task.node_id != node_id:
        return False
    return any(
        o.online and not o.node.draining and o.node.free_slots > 0 and not exclusions(o, spec)
        for o in others
    )


def _replica_drawn(
    ctx: HubContext, task: Task, spec: JobSpec, node_id: str, others: list[NodeSnapshot]
) -> bool:
    """Whether this node may take ``task``, a replica, on this claim.

    Never a replica of a task whose other replica it holds or ran. Otherwise by lot among it
    and the other idle nodes that could take it, so that which nodes check a result is left to
    chance: taking the first claimer (or the cheapest) would let whoever claims fastest with
    many nodes check itself. A node that loses the draw claims again within a poll interval.
    """
    if not spec.verify.replicated:
        return True
    if spec.verify.mode == "adaptive" and task.replica == 0:
        return True  # the work itself; its check, if drawn, is a replica left to chance
    # The draw first: a lost one needs no read of the task's replicas. The idle nodes counted
    # as rivals include those holding a replica, so the odds are a little under an even share.
    rivals = sum(
        1
        for o in others
        if o.online and not o.node.draining and o.node.free_slots > 0 and not exclusions(o, spec)
    )
    if secrets.randbelow(rivals + 1) != 0:
        return False
    siblings = ctx.store.list_replicas(task.job_id, task.index)
    return all(t.node_id != node_id for t in siblings if t.id != task.id)


def lease_end(ctx: HubContext, task: Task, spec: JobSpec, now: float) -> float:
    """When a lease renewed at ``now`` runs out: a lease period later, but never past the
    attempt's time limit, so a node cannot hold a task longer than its job allows."""
    deadline = attempt_deadline(ctx, task, spec.max_runtime_s)
    return min(now + ctx.config.lease_timeout_s, deadline)


def _lease(ctx: HubContext, node: Node, task: Task, job: Job, now: float) -> Assignment:
    task.state = next_task_state(task.state, TaskEvent.CLAIM)
    task.attempt += 1
    task.node_id = node.id
    task.started_at = now
    task.lease_expires_at = lease_end(ctx, task, job.spec, now)
    task.exit_code = None
    task.error = None
    task.log_bytes = 0
    task.updated_at = now
    spec = job.spec
    price = task_price_micro_per_hour(node, spec.resources)
    changes = Changes(tasks=[task], work=[work_record(task, price)])
    update_job_state(ctx, job, changes, now)
    ctx.store.apply(changes)
    return Assignment(
        task_id=task.id,
        job_id=job.id,
        attempt=task.attempt,
        index=task.index,
        params=task.params,
        command=render_command(spec.command, task.params) if spec.command else None,
        entrypoint=spec.entrypoint,
        inputs={i.name: i.sha256 for i in spec.inputs if i.sha256 is not None},
        outputs=spec.outputs,
        resources=spec.resources,
        max_runtime_s=spec.max_runtime_s,
        checkpoint_interval_s=spec.checkpoint_interval_s,
        network=spec.network,
        env=spec.env,
        resume_from=task.last_checkpoint_sha,
        resume_chain=_resume_chain(ctx, task),
        lease_expires_at=task.lease_expires_at,
        kind=spec.kind,
        train=spec.train,
    )


def _resume_chain(ctx: HubContext, task: Task) -> list[str]:
    """The links before ``resume_from``, newest first: what the node falls back to when the
    newest does not restore. Rejected links are left out (``live_chain``)."""
    if task.last_checkpoint_sha is None:
        return []
    chain = live_chain(ctx.store.list_checkpoints(task.id), task.last_checkpoint_sha)
    return [link.sha256 for link in chain[1 : 1 + _RESUME_CHAIN_LINKS]]


def grace_after_restart(ctx: HubContext) -> int:
    """Give every running lease one more lease period, from now (never past its attempt's time
    limit); returns how many were extended.

    While no hub was up, nodes could not renew their leases; without this, a hub down for longer
    than the lease timeout would requeue every task at start-up, though the nodes carry on.
    """
    now = ctx.clock()
    extended = 0
    for task in ctx.store.running_tasks():
        spec = readable_spec(ctx, task.job_id)
        if spec is None:
            continue  # its job failed just now
        end = lease_end(ctx, task, spec, now)  # a time limit still holds
        if (task.lease_expires_at or now) < end:
            task.lease_expires_at = end
            try:
                ctx.store.apply(Changes(tasks=[task]))
                extended += 1
            except StaleWrite:
                continue  # renewed by a node through another hub meanwhile
    return extended


def expire_leases(ctx: HubContext) -> int:
    """End the leases that ran out; returns how many.

    A lease that lived to its attempt's time limit (renewals stop there) ends as a timed-out
    failure (``time_out``); any other returns its task to the queue without blame.
    """
    now = ctx.clock()
    expired = 0
    for task in ctx.store.expired_leases(now):
        spec = readable_spec(ctx, task.job_id)
        if spec is None:
            continue  # its job failed just now, cancelling the task
        deadline = attempt_deadline(ctx, task, spec.max_runtime_s)
        # The node was last heard from when it last renewed: the lease's end less its length.
        last_heard = (task.lease_expires_at or now) - ctx.config.lease_timeout_s
        runtime_s = max(0.0, last_heard - (task.started_at or last_heard))
        try:
            if (task.lease_expires_at or now) >= deadline:
                time_out(ctx, task, now)
            else:
                requeue(ctx, task, TaskEvent.LEASE_LOST, runtime_s, now)
            expired += 1
        except StaleWrite:
            continue  # renewed or finished meanwhile
    if expired:
        ctx.work.notify()
    return expired


def requeue(ctx: HubContext, task: Task, event: TaskEvent, runtime_s: float, now: float) -> None:
    """Back to the queue without blame (lease lost, node drained), keeping the checkpoint.

    Losing a node is not the task's fault and costs no retry, but a task that has lost its node
    ``MAX_LOST_LEASES`` times is probably what kills them (or no node can keep it alive): it fails
    rather than cycle through the market for ever.
    """
    job = ctx.store.get_job(task.job_id)
    work = attempt_work(ctx, task, runtime_s, now, completed=False)
    lost = task.attempt - task.failures  # attempts that ended without the task failing
    if event is TaskEvent.LEASE_LOST and lost >= MAX_LOST_LEASES:
        event = TaskEvent.FAIL_FINAL
        task.error = f"lost its node {lost} times (the last at {task.progress:.0%} progress)"
    task.state = next_task_state(task.state, event)
    _end_lease(ctx, job, task, Changes(tasks=[task], work=[work]), now)


def time_out(ctx: HubContext, task: Task, now: float) -> None:
    """End an attempt that reached its time limit as the node's own limit would: a failure of
    the task (it counts against the retries) whose work is kept up to its last checkpoint; the
    rest of the time it held the lease is lost."""
    job = ctx.store.get_job(task.job_id)
    limit_s = job.spec.max_runtime_s
    held_s = attempt_deadline(ctx, task, limit_s) - (task.started_at or now)
    work = attempt_work(ctx, task, held_s, now, completed=False)
    event = fail_event(task, job.spec.retries)
    task.failures += 1
    task.state = next_task_state(task.state, event)
    task.error = f"time limit of {limit_s} s exceeded"
    _end_lease(ctx, job, task, Changes(tasks=[task], work=[work]), now)


def _end_lease(ctx: HubContext, job: Job, task: Task, changes: Changes, now: float) -> None:
    task.lease_expires_at = None
    task.updated_at = now
    update_job_state(ctx, job, changes, now)
    ctx.store.apply(changes)
    if recount_job(ctx, job.id) in TERMINAL_JOB_STATES:
        escrow.settle_quietly(ctx, job.id)  # failed for good: pay what was kept, refund the rest
