"""Plans: before a job is stored, say which nodes could run it, why the rest cannot, and the cost.

A plan explains itself in sentences a consumer can act on ("1 price above the limit (cheapest
excluded asks 0.5 cr/hour)"), and its ``max_cost_micro`` is the job's worst case at its own price
limit: what the ledger locks in escrow at submit. All money here is integer micro-credits; costs
round up so escrow never falls a micro-credit short of what the work may earn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from lumbung.market import matching
from lumbung.market.matching import (
    CONSTRAINTS,
    PRICE_ABOVE_LIMIT,
    NodeSnapshot,
    exclusions,
    rank_key,
    task_price_micro_per_hour,
)
from lumbung.wire.api import Plan, PlanNode
from lumbung.wire.spec import JobSpec

MICRO_PER_CREDIT = 1_000_000
SECONDS_PER_HOUR = 3600

# How each constraint reads in a sentence ("2 too little memory").
_CONSTRAINT_WORDS: Mapping[str, str] = {
    matching.OFFLINE: "offline",
    matching.DRAINING: "draining",
    matching.KIND_NOT_RUN: "not running this kind of job",
    matching.ISOLATION_TOO_WEAK: "isolation weaker than the job's resources.isolation",
    matching.TOO_FEW_GPUS: "too few GPUs",
    matching.GPU_MODEL_NOT_ALLOWED: "GPU model not allowed",
    matching.TOO_LITTLE_GPU_MEMORY: "too little GPU memory",
    matching.TOO_FEW_CPUS: "too few CPUs",
    matching.TOO_LITTLE_MEMORY: "too little memory",
    matching.TOO_LITTLE_DISK: "too little free disk",
    matching.PRICE_ABOVE_LIMIT: "price above the limit",
}


def format_credits(micro: int) -> str:
    """Micro-credits for humans, exact (no floats): 1_500_000 -> "1.5 cr", 12_000 -> "0.012 cr"."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_CREDIT)
    fraction = f"{frac:06d}".rstrip("0")
    return f"{sign}{whole:,}{'.' + fraction if fraction else ''} cr"


def cost_micro(price_micro_per_hour: int, runtime_s: int, task_count: int) -> int:
    """What ``task_count`` tasks cost at an hourly price if each runs ``runtime_s``.

    Each task's cost rounds up on its own, so a job's escrow is exactly ``task_count`` times
    ``task_budget_micro``: the most settlement ever pays for one task.
    """
    return task_count * -(-price_micro_per_hour * runtime_s // SECONDS_PER_HOUR)


def task_budget_micro(spec: JobSpec) -> int:
    """The most one task of ``spec`` can earn its providers, over all its attempts."""
    return cost_micro(spec.max_price_micro_per_hour, spec.max_runtime_s, 1)


def escrow_micro(spec: JobSpec) -> int:
    """What submitting ``spec`` locks in escrow: its worst case at its own price limit, every
    run of every task (a replicated task may run ``verify.max_replicas`` times)."""
    runs = spec.task_count() * spec.verify.runs_per_task()
    return cost_micro(spec.max_price_micro_per_hour, spec.max_runtime_s, runs)


def verification_extra(spec: JobSpec, price_micro_per_hour: int) -> tuple[float, int]:
    """What verifying ``spec`` costs on top of running each task once, if its replicas agree:
    node-hours at the time limit, and micro-credits at ``price_micro_per_hour``. Adaptive checks
    are counted as if every result were checked, as it is while its nodes are new."""
    if not spec.verify.replicated:
        return 0.0, 0
    verify = spec.verify
    per_task = verify.first_replicas() - 1 if verify.mode == "replicate" else 1
    extra_runs = spec.task_count() * per_task
    hours = extra_runs * spec.max_runtime_s / SECONDS_PER_HOUR
    return hours, cost_micro(price_micro_per_hour, spec.max_runtime_s, extra_runs)


def make_plan(spec: JobSpec, nodes: Sequence[NodeSnapshot]) -> Plan:
    """Which of ``nodes`` fit ``spec`` (best first), what excluded the rest, and the worst cost."""
    task_count = spec.task_count()
    fitting: list[NodeSnapshot] = []
    excluded: Counter[str] = Counter()
    cheapest_refused_micro: int | None = None  # lowest price among nodes too dear for the limit
    for snapshot in nodes:
        failed = exclusions(snapshot, spec)
        if not failed:
            fitting.append(snapshot)
            continue
        excluded.update(failed)
        if PRICE_ABOVE_LIMIT in failed:
            price = task_price_micro_per_hour(snapshot.node, spec.resources)
            if cheapest_refused_micro is None or price < cheapest_refused_micro:
                cheapest_refused_micro = price
    fitting.sort(key=lambda s: rank_key(s, spec))
    fits = [_plan_node(s, spec, task_count * spec.verify.runs_per_task()) for s in fitting]
    excluded_counts = {c: excluded[c] for c in CONSTRAINTS if excluded[c]}
    price = fits[0].price_micro_per_hour if fits else spec.max_price_micro_per_hour
    extra_hours, extra_micro = verification_extra(spec, price)
    plan = Plan(
        task_count=task_count,
        fits=fits,
        excluded=excluded_counts,
        nodes_considered=len(nodes),
        max_cost_micro=escrow_micro(spec),
        explanation=[],
        verification_extra_node_hours=extra_hours,
        verification_extra_micro=extra_micro,
    )
    return plan.model_copy(update={"explanation": _explain(spec, plan, cheapest_refused_micro)})


def waiting_reason(plan: Plan) -> str | None:
    """Why the job cannot start now, in one line; None when some online node fits it."""
    if any(node.online for node in plan.fits):
        return None
    if plan.nodes_considered == 0:
        return "no online node fits: no nodes are registered"
    counts = ", ".join(f"{n} {c}" for c, n in _by_count(plan.excluded))
    return f"no online node fits: {counts}"


def _plan_node(snapshot: NodeSnapshot, spec: JobSpec, runs: int) -> PlanNode:
    price = task_price_micro_per_hour(snapshot.node, spec.resources)
    return PlanNode(
        node_id=snapshot.node.id,
        name=snapshot.node.name,
        online=snapshot.online,
        reliability=snapshot.reliability,
        price_micro_per_hour=price,
        max_cost_micro=cost_micro(price, spec.max_runtime_s, runs),
    )


def _explain(spec: JobSpec, plan: Plan, cheapest_refused_micro: int | None) -> list[str]:
    lines: list[str] = []
    reasons = _reasons(plan.excluded, cheapest_refused_micro)
    if plan.fits:
        best = plan.fits[0]
        lines.append(
            f"{len(plan.fits)} of {plan.nodes_considered} nodes fit; cheapest is {best.name} at "
            f"{format_credits(best.price_micro_per_hour)}/hour "
            f"(at most {format_credits(best.max_cost_micro)} for the whole job)."
        )
        excluded_nodes = plan.nodes_considered - len(plan.fits)
        if excluded_nodes:
            lines.append(f"{excluded_nodes} excluded: {reasons}.")
    else:
        why = reasons if plan.nodes_considered else "no nodes are registered"
        lines.append(f"No online node can run this job now; it will wait in the queue: {why}.")
    lines.append(_verification_line(spec, plan))
    tasks = f"{plan.task_count} task{'s' if plan.task_count != 1 else ''}"
    runs = spec.verify.runs_per_task()
    times = f" x {runs} runs" if runs > 1 else ""
    lines.append(
        f"Worst case at the job's price limit: {format_credits(plan.max_cost_micro)} "
        f"({tasks}{times} x up to {_format_duration(spec.max_runtime_s)} x "
        f"{format_credits(spec.max_price_micro_per_hour)}/hour), held in escrow until settled."
    )
    return lines


def _verification_line(spec: JobSpec, plan: Plan) -> str:
    verify = spec.verify
    if not verify.replicated:
        return "Verification: none; each result is paid on its provider's word."
    compared = (
        f"numerically (rtol {verify.rtol:g}, atol {verify.atol:g})"
        if verify.compare == "numeric"
        else "by SHA-256"
    )
    cost = (
        f"{plan.verification_extra_node_hours:.3g} node-hours at most and "
        f"{format_credits(plan.verification_extra_micro)} at the cheapest fitting price"
    )
    if verify.mode == "adaptive":
        return (
            "Verification: adaptive; a result is checked by a replica on another node picked "
            "at random, always while its node has fewer than 10 valid results in a row, then "
            f"with probability 1/count (at least 9%), outputs compared {compared} (up to "
            f"{verify.runs_per_task()} runs while they disagree). With every result checked "
            f"that adds {cost}; a result that disagrees with the quorum is not paid."
        )
    return (
        f"Verification: each task runs on {verify.replicas} distinct nodes picked at random and "
        f"a quorum of {verify.quorum} must agree, outputs compared {compared} (up to "
        f"{verify.runs_per_task()} runs while they disagree). That adds {cost} when they "
        "agree; a result that disagrees with the quorum is not paid."
    )


def _reasons(excluded: Mapping[str, int], cheapest_refused_micro: int | None) -> str:
    """The excluded counts as words: "2 too little memory, 1 offline"."""
    parts = []
    for constraint, count in _by_count(excluded):
        part = f"{count} {_CONSTRAINT_WORDS.get(constraint, constraint)}"
        if constraint == PRICE_ABOVE_LIMIT and cheapest_refused_micro is not None:
            part += f" (cheapest excluded asks {format_credits(cheapest_refused_micro)}/hour)"
        parts.append(part)
    return ", ".join(parts)


def _by_count(excluded: Mapping[str, int]) -> list[tuple[str, int]]:
    """Constraints most common first; ties in ``CONSTRAINTS`` order, unknown names last."""
    order = {c: i for i, c in enumerate(CONSTRAINTS)}
    return sorted(excluded.items(), key=lambda kv: (-kv[1], order.get(kv[0], len(order)), kv[0]))


def _format_duration(seconds: int) -> str:
    """3600 -> "1h", 5400 -> "1h30m", 90 -> "1m30s"."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{unit}" for v, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return "".join(parts) or "0s"
