"""Replicated ``run`` tasks (``verify.mode: replicate`` or ``adaptive``): the verdict on a task's
replicas.

Each replica is a task row of its own (same job and index, its own ``replica`` number), leased
only to a node that holds no other replica of that task (``lumbung.hub.leases``). After every
commit that finishes a replica, ``judge`` reads the task's replicas as committed and decides with
``lumbung.verify.quorum``:

- a quorum agrees: each finished replica's verdict is ``agreed`` or ``wrong``, and every replica
  that finishes later is compared with the kept (canonical) result, so a verdict once paid never
  changes;
- not yet: more replicas are added, up to ``verify.max_replicas``, until enough run to reach one;
- never (the bound is reached without a quorum): the finished replicas are ``unverified``, the
  rest are cancelled and the job fails saying so. Nobody is blamed for a tie.

An ``adaptive`` task runs once; when it finishes the hub draws, from its own random source,
whether to check it (``lumbung.verify.adaptive``, by the count of consecutive valid results its
node has for this kind of work). Checked, a second replica is queued for another node and the
two are judged as above with a quorum of two; not checked, the result is ``trusted``. Each
verdict of a quorum moves the counts: one more for a node that agreed, back to zero for one
that was wrong, and a wrong result costs its node stake (``lumbung.hub.slashing``).

Settlement pays a replicated job's work only on replicas whose verdict is ``agreed`` or
``trusted`` (``lumbung.hub.escrow``), so a wrong result, and one that cannot be verified, earns
nothing; what the escrow held for it goes back to the consumer. Like ``recount_job``, ``judge``
runs after the commit rather than inside it: two replicas finishing at once each see the other
still running, and the later commit's judgement sees both. A job is not counted as succeeded
while a finished replica still waits for its verdict.
"""

from __future__ import annotations

import logging

from lumbung.errors import Conflict, StaleWrite
from lumbung.hub import slashing
from lumbung.hub.context import HubContext
from lumbung.market.fanout import replica_task
from lumbung.market.model import PENDING_VERDICT, Job, JobState, Task, TaskState
from lumbung.market.states import TERMINAL_JOB_STATES, TaskEvent, next_task_state
from lumbung.store.protocol import Changes
from lumbung.verify import quorum
from lumbung.verify.adaptive import CheckRate
from lumbung.verify.compare import Comparator, Tolerance
from lumbung.wire.spec import JobSpec, VerifySpec

log = logging.getLogger("lumbung.hub.replication")

AGREED = "agreed"
WRONG = "wrong"
UNVERIFIED = "unverified"
TRUSTED = "trusted"  # adaptive: not drawn for a check, paid on its node's record
PAID = frozenset({AGREED, TRUSTED})
CHECKS = CheckRate()
# The numeric comparator parses whole outputs: larger ones are compared by hash only.
NUMERIC_MAX_BYTES = 64 * 1024 * 1024
_JUDGE_RACES = 16


def judge(ctx: HubContext, job_id: str, index: int) -> None:
    """Bring the verdicts of task ``index``'s replicas up to date with what has finished."""
    for _ in range(_JUDGE_RACES):
        job = ctx.store.get_job(job_id)
        if job.state in TERMINAL_JOB_STATES or not job.spec.verify.replicated:
            return
        changes = _judgement(ctx, job, ctx.store.list_replicas(job_id, index))
        if changes is None:
            return
        try:
            ctx.store.apply(changes)
        except (StaleWrite, Conflict):
            continue  # a replica moved, or another judge added the same replica: look again
        if changes.new_tasks:
            ctx.work.notify()
        _count_results(ctx, job, changes.tasks)
        slashing.slash_wrong(ctx, job, [t for t in changes.tasks if t.verdict == WRONG])
        return
    log.warning("job %s task %d: judging lost every race; reconcile judges it again", job_id, index)


def judge_waiting(ctx: HubContext, job: Job) -> None:
    """Judge every task of ``job`` with a finished replica still waiting for its verdict: what a
    hub that stopped between a replica's commit and its judgement left undone."""
    if job.state in TERMINAL_JOB_STATES or not job.spec.verify.replicated:
        return
    waiting = {t.index for t in ctx.store.list_tasks(job.id) if _awaits_verdict(t)}
    for index in sorted(waiting):
        judge(ctx, job.id, index)


def workload_of(spec: JobSpec) -> str:
    """The kind of work a node's record is kept for: honest on CPU tasks is not proof for GPUs."""
    return f"{spec.kind}:{'gpu' if spec.resources.gpus else 'cpu'}"


def _count_results(ctx: HubContext, job: Job, judged: list[Task]) -> None:
    """Move the judged nodes' counts of consecutive valid results; advisory, so a failure here
    is logged, not raised (the verdicts are stored)."""
    workload = workload_of(job.spec)
    results = [
        (t.node_id, workload, t.verdict == AGREED)
        for t in judged
        if t.node_id is not None and t.verdict in (AGREED, WRONG)
    ]
    if not results:
        return
    try:
        ctx.store.record_results(results, ctx.clock())
    except Exception:
        log.exception("job %s: counting %d verdicts failed", job.id, len(results))


def _awaits_verdict(task: Task) -> bool:
    return task.state is TaskState.SUCCEEDED and task.verdict == PENDING_VERDICT


def _judgement(ctx: HubContext, job: Job, replicas: list[Task]) -> Changes | None:
    """What to write for these replicas now; None when nothing changes."""
    verify = job.spec.verify
    finished = sorted(
        (t for t in replicas if t.state is TaskState.SUCCEEDED), key=lambda t: (t.updated_at, t.id)
    )
    if verify.mode == "adaptive" and len(replicas) == 1:
        if not finished or finished[0].verdict != PENDING_VERDICT:
            return None
        return _check_or_trust(ctx, job, finished[0])
    across = _across_classes(ctx, verify)
    canonical = next((t for t in finished if t.verdict == AGREED), None)
    if canonical is not None:
        fresh = [t for t in finished if t.verdict == PENDING_VERDICT]
        for task in fresh:
            same = quorum.agree(_replica(canonical), _replica(task), across)
            task.verdict = AGREED if same else WRONG
        return Changes(tasks=fresh) if fresh else None
    counted, repeats = _one_per_node(finished)
    verdict = quorum.decide(
        [_replica(t) for t in counted],
        quorum=verify.quorum_of(),
        max_replicas=verify.runs_per_task(),
        across_classes=across,
    )
    for task in repeats:
        task.verdict = UNVERIFIED  # a second result from one node proves nothing
    if verdict.state == "agreed":
        for task in counted:
            task.verdict = AGREED if task.node_id in verdict.agreeing else WRONG
        return Changes(tasks=counted + repeats)
    if verdict.state == "pending":
        return _more_replicas(job, replicas, verdict.more_needed, repeats)
    return _unverifiable(ctx, job, replicas, counted + repeats)


def _check_or_trust(ctx: HubContext, job: Job, task: Task) -> Changes:
    """An adaptive task's only result: drawn for a check (a replica queued for another node) or
    trusted. Either way ``task`` is written, so that of two judges deciding at once only one
    decision stands (the other's write is stale)."""
    streak = ctx.store.valid_streak(task.node_id or "", workload_of(job.spec))
    if CHECKS.should_check(streak, ctx.draw()):
        check = _queued_first(
            replica_task(job.id, task.index, task.params, 1, task.updated_at), task
        )
        return Changes(tasks=[task], new_tasks=[check])
    task.verdict = TRUSTED
    return Changes(tasks=[task])


def _more_replicas(
    job: Job, replicas: list[Task], needed: int, repeats: list[Task]
) -> Changes | None:
    outstanding = sum(1 for t in replicas if t.state in (TaskState.QUEUED, TaskState.RUNNING))
    room = job.spec.verify.runs_per_task() - len(replicas)
    adding = min(needed - outstanding, room)
    if adding <= 0:
        return Changes(tasks=repeats) if repeats else None
    first = replicas[0]
    next_replica = max(t.replica for t in replicas) + 1
    now = max(t.updated_at for t in replicas)
    new = [
        _queued_first(replica_task(job.id, first.index, first.params, next_replica + i, now), first)
        for i in range(adding)
    ]
    return Changes(tasks=repeats, new_tasks=new)


def _queued_first(replica: Task, original: Task) -> Task:
    """A replica added later takes its task's place in the queue: the results it checks wait
    unpaid for it, so it goes before work queued since (the queue is oldest first)."""
    replica.queued_at = original.queued_at
    return replica


def _unverifiable(ctx: HubContext, job: Job, replicas: list[Task], finished: list[Task]) -> Changes:
    now = ctx.clock()
    for task in finished:
        task.verdict = UNVERIFIED
    cancelled = []
    for task in replicas:
        if task.state in (TaskState.QUEUED, TaskState.RUNNING):
            task.state = next_task_state(task.state, TaskEvent.CANCEL)
            task.lease_expires_at = None
            task.updated_at = now
            cancelled.append(task)
    verify = job.spec.verify
    job.state = JobState.FAILED
    job.error = (
        f"task {replicas[0].index} could not be verified: {len(finished)} replicas ran on "
        f"distinct nodes and no {verify.quorum_of()} of them agree (verify.max_replicas is "
        f"{verify.runs_per_task()}); none of them is paid"
    )
    job.updated_at = now
    job.waiting_reason = None
    return Changes(jobs=[job], tasks=finished + cancelled)


def _one_per_node(finished: list[Task]) -> tuple[list[Task], list[Task]]:
    """The first finished replica of each node, and the rest (a node that got two replicas of
    one task through two hubs at once)."""
    seen: set[str | None] = set()
    counted: list[Task] = []
    repeats: list[Task] = []
    for task in finished:
        (repeats if task.node_id in seen else counted).append(task)
        seen.add(task.node_id)
    return counted, repeats


def _replica(task: Task) -> quorum.Replica:
    # Every replicated result comes with its committed execution class (lumbung.hub.commitments).
    return quorum.Replica(
        node_id=task.node_id or "", execution_class=task.execution_class or "", outputs=task.outputs
    )


def _across_classes(ctx: HubContext, verify: VerifySpec) -> quorum.CrossClassAgreement:
    """The job's comparator for replicas of different execution classes whose output hashes
    differ (``quorum.agree`` has compared the names and the hashes already)."""
    comparator = Comparator(verify.compare, Tolerance(rtol=verify.rtol, atol=verify.atol))

    def agree(a: quorum.Replica, b: quorum.Replica) -> bool:
        if verify.compare != "numeric":
            return False
        return all(
            _numbers_agree(ctx, comparator, name, a.outputs[name], b.outputs[name])
            for name in sorted(a.outputs)
            if a.outputs[name] != b.outputs[name]
        )

    return agree


def _numbers_agree(
    ctx: HubContext, comparator: Comparator, name: str, one: str, other: str
) -> bool:
    if max(ctx.blobs.size(one), ctx.blobs.size(other)) > NUMERIC_MAX_BYTES:
        return False  # too large to parse here: outputs whose hashes differ disagree
    with ctx.blobs.open(one) as a, ctx.blobs.open(other) as b:
        return comparator.agree(name, a.read(), b.read())
