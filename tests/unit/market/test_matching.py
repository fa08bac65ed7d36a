"""Matching: constraints, prices, ranking and which task a claiming node is given."""

from __future__ import annotations

from typing import Any

import pytest
from factories import job

from lumbung.market.matching import (
    CONSTRAINTS,
    DRAINING,
    GPU_MODEL_NOT_ALLOWED,
    ISOLATION_TOO_WEAK,
    KIND_NOT_RUN,
    OFFLINE,
    PRICE_ABOVE_LIMIT,
    TOO_FEW_CPUS,
    TOO_FEW_GPUS,
    TOO_LITTLE_DISK,
    TOO_LITTLE_GPU_MEMORY,
    TOO_LITTLE_MEMORY,
    NodeSnapshot,
    choose_task,
    exclusions,
    rank_key,
    task_price_micro_per_hour,
)
from lumbung.market.model import Node, Task, TaskState
from lumbung.wire.api import GpuInfo, Inventory
from lumbung.wire.spec import JobSpec, validate_spec

A100 = "NVIDIA A100-SXM4-80GB"
RTX = "NVIDIA GeForce RTX 4090"


def gpu(model: str = A100, memory_mib: int = 81920) -> GpuInfo:
    return GpuInfo(model=model, memory_mib=memory_mib)


def node(
    node_id: str = "node-a",
    *,
    gpus: list[GpuInfo] | None = None,
    cpus: int = 8,
    memory_mib: int = 32 * 1024,
    disk_free_mib: int = 100 * 1024,
    gpu_price: int = 1_000_000,
    cpu_price: int = 10_000,
    free_slots: int = 1,
    draining: bool = False,
) -> Node:
    return Node(
        id=node_id,
        name=node_id,
        inventory=Inventory(
            gpus=gpus or [], cpus=cpus, memory_mib=memory_mib, disk_free_mib=disk_free_mib
        ),
        price_micro_per_gpu_hour=gpu_price,
        price_micro_per_cpu_hour=cpu_price,
        slots=max(free_slots, 1),
        free_slots=free_slots,
        draining=draining,
        registered_at=0.0,
        last_heartbeat_at=0.0,
    )


def snap(n: Node, *, online: bool = True, reliability: float = 1.0) -> NodeSnapshot:
    return NodeSnapshot(node=n, online=online, reliability=reliability)


def spec(max_price: int = 10**9, **resources: Any) -> JobSpec:
    return job(
        command=["true"],
        grid={},
        max_price_micro_per_hour=max_price,
        resources={"memory_gb": 1, "disk_gb": 1, **resources},
    )


def queued_task(task_id: str = "task_1", queued_at: float = 0.0) -> Task:
    return Task(
        id=task_id,
        job_id="job_1",
        index=0,
        params={},
        state=TaskState.QUEUED,
        queued_at=queued_at,
        updated_at=queued_at,
    )


# --- prices ---------------------------------------------------------------------------------------


def test_task_price_is_gpus_times_gpu_price_plus_cpus_times_cpu_price() -> None:
    n = node(gpu_price=2_000_000, cpu_price=30_000)
    assert task_price_micro_per_hour(n, spec(gpus=2, cpus=4).resources) == 4_120_000


def test_cpu_only_task_pays_only_for_cpus() -> None:
    assert task_price_micro_per_hour(node(cpu_price=25_000), spec(cpus=3).resources) == 75_000


# --- exclusions -----------------------------------------------------------------------------------


def test_node_meeting_every_constraint_has_no_exclusions() -> None:
    n = node(gpus=[gpu(), gpu()], cpus=16, memory_mib=64 * 1024)
    s = spec(gpus=2, gpu_models=["A100"], gpu_memory_gb=80, cpus=16, memory_gb=64)
    assert exclusions(snap(n), s) == []


def test_zero_gpus_wanted_fits_a_node_without_gpus_whatever_the_models() -> None:
    assert exclusions(snap(node(gpus=[])), spec(gpus=0, gpu_models=["H100"])) == []


def test_offline_and_draining_nodes_are_excluded() -> None:
    assert exclusions(snap(node(), online=False), spec()) == [OFFLINE]
    assert exclusions(snap(node(draining=True)), spec()) == [DRAINING]


def test_every_failed_constraint_is_reported() -> None:
    n = node(draining=True, cpus=1, memory_mib=512, disk_free_mib=10, cpu_price=10**6)
    s = spec(max_price=1, gpus=1, cpus=2, memory_gb=1, disk_gb=1)
    assert exclusions(snap(n, online=False), s) == [
        OFFLINE,
        DRAINING,
        TOO_FEW_GPUS,
        TOO_FEW_CPUS,
        TOO_LITTLE_MEMORY,
        TOO_LITTLE_DISK,
        PRICE_ABOVE_LIMIT,
    ]


@pytest.mark.parametrize("pattern", ["A100", "a100", "nvidia a100", "SXM4-80GB", " A100 "])
def test_gpu_model_matches_as_case_insensitive_substring(pattern: str) -> None:
    assert exclusions(snap(node(gpus=[gpu(A100)])), spec(gpus=1, gpu_models=[pattern])) == []


def test_any_of_several_allowed_models_matches() -> None:
    n = node(gpus=[gpu(RTX)])
    assert exclusions(snap(n), spec(gpus=1, gpu_models=["H100", "4090"])) == []


def test_enough_gpus_of_the_wrong_model_is_model_not_allowed() -> None:
    n = node(gpus=[gpu(RTX), gpu(RTX)])
    assert exclusions(snap(n), spec(gpus=2, gpu_models=["A100"])) == [GPU_MODEL_NOT_ALLOWED]


def test_gpus_of_mixed_models_count_only_the_allowed_ones() -> None:
    n = node(gpus=[gpu(A100), gpu(RTX)])
    assert exclusions(snap(n), spec(gpus=1, gpu_models=["A100"])) == []
    assert exclusions(snap(n), spec(gpus=2, gpu_models=["A100"])) == [GPU_MODEL_NOT_ALLOWED]


def test_enough_gpus_of_the_model_but_too_little_memory_is_gpu_memory() -> None:
    n = node(gpus=[gpu(A100, 40 * 1024)])
    assert exclusions(snap(n), spec(gpus=1, gpu_models=["A100"], gpu_memory_gb=80)) == [
        TOO_LITTLE_GPU_MEMORY
    ]


def test_gpu_memory_applies_to_any_model_when_none_is_named() -> None:
    n = node(gpus=[gpu(RTX, 24 * 1024)])
    assert exclusions(snap(n), spec(gpus=1, gpu_memory_gb=48)) == [TOO_LITTLE_GPU_MEMORY]


def test_gpu_memory_exactly_equal_fits_and_one_mib_less_does_not() -> None:
    s = spec(gpus=1, gpu_memory_gb=24)
    assert exclusions(snap(node(gpus=[gpu(RTX, 24 * 1024)])), s) == []
    assert exclusions(snap(node(gpus=[gpu(RTX, 24 * 1024 - 1)])), s) == [TOO_LITTLE_GPU_MEMORY]


def test_fractional_gpu_memory_is_compared_in_mib() -> None:
    s = spec(gpus=1, gpu_memory_gb=0.5)
    assert exclusions(snap(node(gpus=[gpu(RTX, 512)])), s) == []
    assert exclusions(snap(node(gpus=[gpu(RTX, 511)])), s) == [TOO_LITTLE_GPU_MEMORY]


def test_only_gpus_with_enough_memory_count_towards_the_number_wanted() -> None:
    n = node(gpus=[gpu(A100, 80 * 1024), gpu(A100, 40 * 1024)])
    assert exclusions(snap(n), spec(gpus=2, gpu_memory_gb=80)) == [TOO_LITTLE_GPU_MEMORY]


def test_too_few_gpus_in_total_is_too_few_gpus() -> None:
    n = node(gpus=[gpu(RTX)])
    assert exclusions(snap(n), spec(gpus=2)) == [TOO_FEW_GPUS]
    assert exclusions(snap(n), spec(gpus=2, gpu_models=["A100"], gpu_memory_gb=80)) == [
        TOO_FEW_GPUS
    ]


def test_cpus_exactly_equal_fit() -> None:
    assert exclusions(snap(node(cpus=4)), spec(cpus=4)) == []
    assert exclusions(snap(node(cpus=4)), spec(cpus=5)) == [TOO_FEW_CPUS]


def test_memory_exactly_equal_fits_and_one_mib_less_does_not() -> None:
    assert exclusions(snap(node(memory_mib=16 * 1024)), spec(memory_gb=16)) == []
    assert exclusions(snap(node(memory_mib=16 * 1024 - 1)), spec(memory_gb=16)) == [
        TOO_LITTLE_MEMORY
    ]


def test_disk_exactly_equal_fits_and_one_mib_less_does_not() -> None:
    assert exclusions(snap(node(disk_free_mib=50 * 1024)), spec(disk_gb=50)) == []
    assert exclusions(snap(node(disk_free_mib=50 * 1024 - 1)), spec(disk_gb=50)) == [
        TOO_LITTLE_DISK
    ]


def test_free_disk_exactly_the_budget_fits_and_one_mib_less_does_not() -> None:
    assert exclusions(snap(node(disk_free_mib=1024)), spec(disk_gb=1)) == []
    assert exclusions(snap(node(disk_free_mib=1023)), spec(disk_gb=1)) == [TOO_LITTLE_DISK]


def test_price_exactly_at_the_limit_fits_and_one_micro_above_does_not() -> None:
    assert exclusions(snap(node(gpus=[gpu()])), spec(max_price=1_010_000, gpus=1, cpus=1)) == []
    assert exclusions(snap(node(gpus=[gpu()])), spec(max_price=1_009_999, gpus=1, cpus=1)) == [
        PRICE_ABOVE_LIMIT
    ]


def test_constraint_names_are_the_declared_words() -> None:
    assert CONSTRAINTS == (
        "offline",
        "draining",
        "kind_not_run",
        "isolation_too_weak",
        "too_few_gpus",
        "gpu_model_not_allowed",
        "too_little_gpu_memory",
        "too_few_cpus",
        "too_little_memory",
        "too_little_disk",
        "price_above_limit",
    )


# --- ranking --------------------------------------------------------------------------------------


def test_cheaper_node_ranks_first_whatever_its_reliability() -> None:
    s = spec(cpus=1)
    cheap = snap(node("node-z", cpu_price=1), reliability=0.1)
    dear = snap(node("node-a", cpu_price=2), reliability=1.0)
    assert sorted([dear, cheap], key=lambda x: rank_key(x, s)) == [cheap, dear]


def test_price_tie_is_broken_by_reliability_then_id() -> None:
    s = spec(cpus=1)
    steady = snap(node("node-z"), reliability=0.99)
    flaky = snap(node("node-a"), reliability=0.5)
    twin_b = snap(node("node-b"), reliability=0.99)
    ranked = sorted([flaky, steady, twin_b], key=lambda x: rank_key(x, s))
    assert [x.node.id for x in ranked] == ["node-b", "node-z", "node-a"]


def test_rank_key_is_price_then_negative_reliability_then_id() -> None:
    assert rank_key(snap(node("n", cpu_price=7), reliability=0.25), spec(cpus=2)) == (
        14,
        -0.25,
        "n",
    )


# --- choosing a task ------------------------------------------------------------------------------


def test_lone_fitting_claimer_gets_the_oldest_task() -> None:
    s = spec()
    old, new = queued_task("task_old", 1.0), queued_task("task_new", 2.0)
    assert choose_task(snap(node()), [(old, s), (new, s)], [], now=3.0, grace_s=60) is old


def test_no_task_when_nothing_is_queued() -> None:
    assert choose_task(snap(node()), [], [], now=0.0, grace_s=1) is None


def test_claimer_skips_tasks_it_cannot_run() -> None:
    gpu_job, cpu_job = spec(gpus=1), spec()
    t_gpu, t_cpu = queued_task("task_gpu"), queued_task("task_cpu")
    chosen = choose_task(snap(node()), [(t_gpu, gpu_job), (t_cpu, cpu_job)], [], 0.0, 60)
    assert chosen is t_cpu


def test_claimer_gets_nothing_when_it_fits_no_task_even_after_grace() -> None:
    t = queued_task(queued_at=0.0)
    assert choose_task(snap(node()), [(t, spec(gpus=1))], [], now=1e6, grace_s=1) is None


def test_dearer_claimer_waits_while_a_cheaper_idle_node_fits() -> None:
    s, t = spec(), queued_task(queued_at=10.0)
    dear, cheap = snap(node("dear", cpu_price=2)), snap(node("cheap", cpu_price=1))
    assert choose_task(dear, [(t, s)], [cheap], now=11.0, grace_s=5) is None
    assert choose_task(cheap, [(t, s)], [dear], now=11.0, grace_s=5) is t


def test_dearer_claimer_takes_the_task_after_the_grace_window() -> None:
    s, t = spec(), queued_task(queued_at=10.0)
    dear, cheap = snap(node("dear", cpu_price=2)), snap(node("cheap", cpu_price=1))
    assert choose_task(dear, [(t, s)], [cheap], now=15.0, grace_s=5) is None  # exactly grace
    assert choose_task(dear, [(t, s)], [cheap], now=15.001, grace_s=5) is t


@pytest.mark.parametrize(
    "better",
    [
        snap(node("cheap", cpu_price=1, free_slots=0)),
        snap(node("cheap", cpu_price=1), online=False),
        snap(node("cheap", cpu_price=1, draining=True)),
        snap(node("cheap", cpu_price=1, memory_mib=10)),
    ],
    ids=["busy", "offline", "draining", "does-not-fit"],
)
def test_cheaper_node_that_cannot_take_the_task_does_not_block(better: NodeSnapshot) -> None:
    s, t = spec(memory_gb=1), queued_task()
    dear = snap(node("dear", cpu_price=2))
    assert choose_task(dear, [(t, s)], [better], now=0.0, grace_s=60) is t


def test_equally_priced_more_reliable_idle_node_gets_first_refusal() -> None:
    s, t = spec(), queued_task()
    flaky = snap(node("a", cpu_price=1), reliability=0.5)
    steady = snap(node("b", cpu_price=1), reliability=0.9)
    assert choose_task(flaky, [(t, s)], [steady], now=0.0, grace_s=60) is None
    assert choose_task(steady, [(t, s)], [flaky], now=0.0, grace_s=60) is t


def test_exact_tie_goes_to_the_lower_node_id() -> None:
    s, t = spec(), queued_task()
    a, b = snap(node("a")), snap(node("b"))
    assert choose_task(b, [(t, s)], [a], now=0.0, grace_s=60) is None
    assert choose_task(a, [(t, s)], [b], now=0.0, grace_s=60) is t


def test_claimer_listed_among_others_does_not_block_itself() -> None:
    s, t = spec(), queued_task()
    me = snap(node("me"))
    assert choose_task(me, [(t, s)], [me], now=0.0, grace_s=60) is t


def test_claimer_passes_over_a_fresh_task_to_an_older_one_past_grace() -> None:
    # Another node is cheaper for both jobs; only the task that waited past grace is ours.
    s1, s2 = spec(), spec(cpus=2)
    fresh, stale = queued_task("task_fresh", 95.0), queued_task("task_stale", 0.0)
    dear, cheap = snap(node("dear", cpu_price=2)), snap(node("cheap", cpu_price=1))
    chosen = choose_task(dear, [(fresh, s1), (stale, s2)], [cheap], now=100.0, grace_s=30)
    assert chosen is stale


def test_claimer_takes_a_later_task_a_better_node_cannot_run() -> None:
    big, small = spec(memory_gb=20), spec(memory_gb=1)
    t_small, t_big = queued_task("task_small"), queued_task("task_big")
    dear = snap(node("dear", cpu_price=2, memory_mib=32 * 1024))
    cheap_small = snap(node("cheap", cpu_price=1, memory_mib=4 * 1024))
    chosen = choose_task(dear, [(t_small, small), (t_big, big)], [cheap_small], 0.0, 60)
    assert chosen is t_big


def test_claimer_does_not_check_its_own_free_slots() -> None:
    t = queued_task()
    assert choose_task(snap(node(free_slots=0)), [(t, spec())], [], 0.0, 60) is t


def test_claimer_that_does_not_fit_never_gets_a_task_however_old() -> None:
    t = queued_task(queued_at=0.0)
    offline = snap(node(), online=False)
    assert choose_task(offline, [(t, spec())], [], now=1e9, grace_s=0) is None


def test_a_train_job_fits_only_nodes_that_run_train_jobs() -> None:
    spec = validate_spec(
        {
            "name": "lm",
            "kind": "train",
            "train": {"rounds": 2, "workers": {"wanted": 2}},
            "max_price_micro_per_hour": 10**9,
        }
    )
    runner = snap(node())
    assert exclusions(runner, spec) == [KIND_NOT_RUN]
    trainer = node()
    trainer.inventory = trainer.inventory.model_copy(update={"kinds": ["run", "train"]})
    assert exclusions(snap(trainer), spec) == []


def test_a_job_that_requires_a_sandbox_fits_only_sandboxed_nodes() -> None:
    wanted = validate_spec(
        {
            "name": "private",
            "command": ["true"],
            "resources": {"isolation": "sandbox"},
            "max_price_micro_per_hour": 10**9,
        }
    )
    plain = node()  # an inventory says "process" unless its node runs a sandbox
    assert exclusions(snap(plain), wanted) == [ISOLATION_TOO_WEAK]
    sandboxed = node()
    isolation = sandboxed.inventory.isolation.model_copy(update={"level": "sandbox"})
    sandboxed.inventory = sandboxed.inventory.model_copy(update={"isolation": isolation})
    assert exclusions(snap(sandboxed), wanted) == []
    assert exclusions(snap(plain), spec()) == []  # the default accepts any node
