"""Matching: which nodes can run a job's tasks, how they rank, and which task a claiming node gets.

Lumbung is a pull market: nodes dial in and claim work, the hub never pushes. So the hub cannot
"send a task to the cheapest node"; it can only decide, when some node asks, whether that node
should get a task. ``choose_task`` gives a cheaper (or equally priced but more reliable) idle node
first refusal: a dearer node is told to wait while a better one that could run the task is free,
and the better one will take it on its next claim. Because a node can be wedged (online by its
heartbeats but no longer claiming), first refusal lasts only ``grace_s`` after the task was
queued; after that any node that fits may take it, so no job starves behind a cheap, stuck node.

Replicas of a task (``verify.mode: replicate``) get no first refusal by price: if the cheapest
nodes always took them, one operator of many cheap nodes could arrange to check its own results.
The hub picks among the nodes that claim them at random instead (``lumbung.hub.leases``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lumbung.market.model import Node, Task
from lumbung.wire.api import ISOLATION_RANK, GpuInfo
from lumbung.wire.spec import JobSpec, Resources

# Constraint names: the keys of ``Plan.excluded`` and the words of a job's waiting reason.
OFFLINE = "offline"
DRAINING = "draining"
KIND_NOT_RUN = "kind_not_run"
ISOLATION_TOO_WEAK = "isolation_too_weak"
TOO_FEW_GPUS = "too_few_gpus"
GPU_MODEL_NOT_ALLOWED = "gpu_model_not_allowed"
TOO_LITTLE_GPU_MEMORY = "too_little_gpu_memory"
TOO_FEW_CPUS = "too_few_cpus"
TOO_LITTLE_MEMORY = "too_little_memory"
TOO_LITTLE_DISK = "too_little_disk"
PRICE_ABOVE_LIMIT = "price_above_limit"

# Every constraint, in the order ``exclusions`` checks them (and plans list ties).
CONSTRAINTS: tuple[str, ...] = (
    OFFLINE,
    DRAINING,
    KIND_NOT_RUN,
    ISOLATION_TOO_WEAK,
    TOO_FEW_GPUS,
    GPU_MODEL_NOT_ALLOWED,
    TOO_LITTLE_GPU_MEMORY,
    TOO_FEW_CPUS,
    TOO_LITTLE_MEMORY,
    TOO_LITTLE_DISK,
    PRICE_ABOVE_LIMIT,
)

MIB_PER_GB = 1024


@dataclass(frozen=True)
class NodeSnapshot:
    """A node as the market sees it at one moment: its record plus what the hub measured."""

    node: Node
    online: bool
    reliability: float


def task_price_micro_per_hour(node: Node, resources: Resources) -> int:
    """What one task with ``resources`` costs per hour on ``node``: its GPUs plus its CPUs."""
    return (
        resources.gpus * node.price_micro_per_gpu_hour
        + resources.cpus * node.price_micro_per_cpu_hour
    )


def exclusions(snapshot: NodeSnapshot, spec: JobSpec) -> list[str]:
    """Every constraint ``snapshot``'s node fails for one task of ``spec``; empty when it fits."""
    node, wanted = snapshot.node, spec.resources
    inventory = node.inventory
    failed: list[str] = []
    if not snapshot.online:
        failed.append(OFFLINE)
    if node.draining:
        failed.append(DRAINING)
    if spec.kind not in inventory.kinds:
        failed.append(KIND_NOT_RUN)
    if ISOLATION_RANK[inventory.isolation.level] < ISOLATION_RANK[wanted.isolation]:
        failed.append(ISOLATION_TOO_WEAK)
    gpu_problem = _gpu_exclusion(inventory.gpus, wanted)
    if gpu_problem is not None:
        failed.append(gpu_problem)
    if inventory.cpus < wanted.cpus:
        failed.append(TOO_FEW_CPUS)
    if inventory.memory_mib < wanted.memory_gb * MIB_PER_GB:
        failed.append(TOO_LITTLE_MEMORY)
    if inventory.disk_free_mib < wanted.disk_gb * MIB_PER_GB:
        failed.append(TOO_LITTLE_DISK)
    if task_price_micro_per_hour(node, wanted) > spec.max_price_micro_per_hour:
        failed.append(PRICE_ABOVE_LIMIT)
    return failed


def _gpu_exclusion(gpus: Sequence[GpuInfo], wanted: Resources) -> str | None:
    """The one GPU constraint a node fails, naming the nearest miss so the user knows what to relax.

    A node with enough GPUs but of the wrong model is told apart from one with the right model but
    too little memory per card, and both from one that simply has too few cards.
    """
    if wanted.gpus == 0:
        return None
    of_model = [g for g in gpus if _model_allowed(g.model, wanted.gpu_models)]
    usable = [g for g in of_model if g.memory_mib >= wanted.gpu_memory_gb * MIB_PER_GB]
    if len(usable) >= wanted.gpus:
        return None
    if len(of_model) >= wanted.gpus:
        return TOO_LITTLE_GPU_MEMORY
    if len(gpus) >= wanted.gpus:
        return GPU_MODEL_NOT_ALLOWED
    return TOO_FEW_GPUS


def _model_allowed(model: str, allowed: Sequence[str]) -> bool:
    """Any model when none is named, else a case-insensitive substring: "A100" allows
    "NVIDIA A100-SXM4-80GB"."""
    if not allowed:
        return True
    name = model.casefold()
    return any(a.strip().casefold() in name for a in allowed)


def rank_key(snapshot: NodeSnapshot, spec: JobSpec) -> tuple[int, float, str]:
    """Sort key among fitting nodes: cheapest first, then most reliable, then node id so that
    equal nodes still order the same way on every hub."""
    price = task_price_micro_per_hour(snapshot.node, spec.resources)
    return (price, -snapshot.reliability, snapshot.node.id)


def choose_task(
    claimer: NodeSnapshot,
    queued: Sequence[tuple[Task, JobSpec]],
    others: Sequence[NodeSnapshot],
    now: float,
    grace_s: float,
) -> Task | None:
    """The first task of ``queued`` (oldest first) that ``claimer`` should take now, if any.

    A task is the claimer's when its node fits the task's spec and either no other idle node
    (online, not draining, a free slot, fits) ranks strictly better, or the task has waited more
    than ``grace_s`` since it was queued. Whether the claimer has a free slot is the caller's
    check. ``others`` may include the claimer itself; it is skipped.
    """
    # Decisions depend only on the spec until the grace test, and a job's tasks share one spec:
    # decide once per spec so a claim over thousands of queued tasks stays linear.
    decided: dict[int, tuple[bool, bool]] = {}
    for task, spec in queued:
        key = id(spec)
        if key not in decided:
            fits = not exclusions(claimer, spec)
            by_price = fits and not spec.verify.replicated
            decided[key] = (fits, by_price and _better_idle_node(claimer, others, spec))
        fits, outranked = decided[key]
        if fits and (not outranked or now - task.queued_at > grace_s):
            return task
    return None


def _better_idle_node(claimer: NodeSnapshot, others: Sequence[NodeSnapshot], spec: JobSpec) -> bool:
    mine = rank_key(claimer, spec)
    return any(
        other.node.id != claimer.node.id
        and other.node.free_slots > 0
        and not exclusions(other, spec)
        and rank_key(other, spec) < mine
        for other in others
    )
