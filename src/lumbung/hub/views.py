"""Domain records turned into the wire's views (``lumbung.wire.api``)."""

from __future__ import annotations

from lumbung.hub.context import HubContext
from lumbung.market.matching import NodeSnapshot
from lumbung.market.model import Job, Node, Task
from lumbung.wire.api import CheckpointView, JobView, NodeView, TaskView, WorkView


def node_view(snapshot: NodeSnapshot) -> NodeView:
    node = snapshot.node
    return NodeView(
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


def _task_view(ctx: HubContext, task: Task) -> TaskView:
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
            )
            for c in ctx.store.list_checkpoints(task.id)
        ],
        updated_at=task.updated_at,
    )


def _cost_micro(seconds: float, price_micro_per_hour: int) -> int:
    # Whole milliseconds keep the arithmetic in integers; the remainder rounds down.
    return int(seconds * 1000) * price_micro_per_hour // 3_600_000


def _work_views(ctx: HubContext, job: Job) -> list[WorkView]:
    names: dict[str, Node] = {n.id: n for n in ctx.store.list_nodes()}
    totals: dict[tuple[str, int], list[float]] = {}
    for work in ctx.store.list_work(job.id):
        kept_lost = totals.setdefault((work.node_id, work.price_micro_per_hour), [0.0, 0.0])
        kept_lost[0] += work.kept_s
        kept_lost[1] += work.lost_s
    return [
        WorkView(
            node_id=node_id,
            node_name=names[node_id].name if node_id in names else node_id,
            price_micro_per_hour=price,
            kept_s=round(kept, 3),
            lost_s=round(lost, 3),
            kept_cost_micro=_cost_micro(kept, price),
            lost_cost_micro=_cost_micro(lost, price),
        )
        for (node_id, price), (kept, lost) in sorted(totals.items())
    ]


def job_view(ctx: HubContext, job: Job) -> JobView:
    return JobView(
        id=job.id,
        owner=job.owner,
        name=job.name,
        state=job.state.value,
        spec=job.spec,
        created_at=job.created_at,
        updated_at=job.updated_at,
        tasks=[_task_view(ctx, t) for t in ctx.store.list_tasks(job.id)],
        waiting_reason=job.waiting_reason,
        error=job.error,
        work=_work_views(ctx, job),
    )
