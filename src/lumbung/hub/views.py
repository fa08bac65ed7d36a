"""Domain records turned into the wire's views (``lumbung.wire.api``)."""

from __future__ import annotations

from lumbung.errors import NotFound
from lumbung.hub.context import HubContext
from lumbung.ledger.settlement import earned_micro
from lumbung.market.matching import NodeSnapshot
from lumbung.market.model import CheckpointLink, Job, Node, Task
from lumbung.wire.api import (
    CheckpointView,
    EscrowView,
    JobView,
    NodeView,
    RoundView,
    ScreenedUpdate,
    TaskView,
    WorkView,
)


def node_view(snapshot: NodeSnapshot, valid_streaks: dict[str, int] | None = None) -> NodeView:
    node = snapshot.node
    return NodeView(
        valid_streaks=valid_streaks or {},
        id=node.id,
        name=node.name,
        inventory=node.inventory,
        price_micro_per_gpu_hour=node.price_micro_per_gpu_hour,
        price_micro_per_cpu_hour=node.price_micro_per_cpu_hour,
        slots=node.slots,
        online=snapshot.online,
        reliability=snapshot.reliability,
        last_heartbeat_at=node.last_heartbeat_at,
        draining=node.draining,
    )


def _task_view(task: Task, chain: list[CheckpointLink]) -> TaskView:
    return TaskView(
        id=task.id,
        index=task.index,
        params=task.params,
        state=task.state.value,
        attempt=task.attempt,
        node_id=task.node_id,
        progress=task.progress,
        exit_code=task.exit_code,
        outputs=task.outputs,
        error=task.error,
        replica=task.replica,
        verdict=task.verdict,
        checkpoints=[
            CheckpointView(
                seq=c.seq,
                sha256=c.sha256,
                prev_sha256=c.prev_sha256,
                node_id=c.node_id,
                attempt=c.attempt,
                progress=c.progress,
                kept_s=c.kept_s,
                created_at=c.created_at,
                rejected=c.rejected,
            )
            for c in chain
        ],
        updated_at=task.updated_at,
    )


def _cost_micro(seconds: float, price_micro_per_hour: int) -> int:
    # Whole milliseconds, as settlement counts them, keep the arithmetic in integers.
    return earned_micro(int(seconds * 1000), price_micro_per_hour)


def _work_views(ctx: HubContext, job: Job) -> list[WorkView]:
    names: dict[str, Node] = {n.id: n for n in ctx.store.list_nodes()}
    # (node, price) -> [kept s, lost s, kept cost, lost cost]; costs per attempt, rounded as
    # settlement rounds them, so the view's kept cost is what the ledger paid before the fee.
    totals: dict[tuple[str, int], list[float]] = {}
    for work in ctx.store.list_work(job.id):
        row = totals.setdefault((work.node_id, work.price_micro_per_hour), [0.0, 0.0, 0, 0])
        row[0] += work.kept_s
        row[1] += work.lost_s
        row[2] += _cost_micro(work.kept_s, work.price_micro_per_hour)
        row[3] += _cost_micro(work.lost_s, work.price_micro_per_hour)
    return [
        WorkView(
            node_id=node_id,
            node_name=names[node_id].name if node_id in names else node_id,
            price_micro_per_hour=price,
            kept_s=round(kept, 3),
            lost_s=round(lost, 3),
            kept_cost_micro=int(kept_cost),
            lost_cost_micro=int(lost_cost),
        )
        for (node_id, price), (kept, lost, kept_cost, lost_cost) in sorted(totals.items())
    ]


def _escrow_view(ctx: HubContext, job: Job) -> EscrowView | None:
    if ctx.log is None:
        return None
    try:
        escrow = ctx.log.escrow(job.id)
    except NotFound:
        return None
    return EscrowView(
        locked_micro=escrow.locked,
        released_micro=escrow.released,
        fees_micro=escrow.fees,
        refunded_micro=escrow.refunded,
        remaining_micro=escrow.remaining,
    )


def _round_views(ctx: HubContext, job: Job) -> tuple[list[RoundView], str | None]:
    """A train job's rounds, and its trained model once the last round closed."""
    if job.spec.train is None:
        return [], None
    rounds = ctx.store.list_rounds(job.id)
    devices: dict[int, list[str]] = {}
    nodes: dict[tuple[int, str], str] = {}
    for update in ctx.store.list_updates(job.id):  # one query, not one per round
        devices.setdefault(update.round_index, []).append(update.device)
        nodes[update.round_index, update.task_id] = update.node_id
    total = job.spec.train.total_rounds()
    model = rounds[-1].base_sha if rounds and rounds[-1].index >= total else None
    views = [
        RoundView(
            index=r.index,
            state=r.state.value,
            participants=r.participants,
            opened_at=r.opened_at,
            closed_at=r.closed_at,
            base_sha=r.base_sha,
            metrics=r.metrics,
            devices=sorted(devices.get(r.index, [])),
            screened_out=[
                ScreenedUpdate(
                    task_id=task_id, node_id=nodes.get((r.index, task_id), ""), reason=reason
                )
                for task_id, reason in sorted(r.screened.items())
            ],
        )
        for r in rounds
        if r.index < total  # the record past the last round only holds the model
    ]
    return views, model


def job_view(ctx: HubContext, job: Job) -> JobView:
    rounds, model = _round_views(ctx, job)
    # One read for every task's chain: a sweep's view is polled while it runs.
    chains: dict[str, list[CheckpointLink]] = {}
    for link in ctx.store.list_job_checkpoints(job.id):
        chains.setdefault(link.task_id, []).append(link)
    return JobView(
        id=job.id,
        owner=job.owner,
        name=job.name,
        state=job.state.value,
        spec=job.spec,
        created_at=job.created_at,
        updated_at=job.updated_at,
        tasks=[_task_view(t, chains.get(t.id, [])) for t in ctx.store.list_tasks(job.id)],
        waiting_reason=job.waiting_reason,
        error=job.error,
        work=_work_views(ctx, job),
        escrow=_escrow_view(ctx, job),
        rounds=rounds,
        model_sha256=model,
    )
