"""Plans: fitting nodes in rank order, exclusion counts, worst-case costs and their explanation."""

from __future__ import annotations

from typing import Any

import pytest
from factories import job

from lumbung.market.matching import NodeSnapshot
from lumbung.market.model import Node
from lumbung.market.plan import cost_micro, format_credits, make_plan, waiting_reason
from lumbung.wire.api import GpuInfo, Inventory, Plan, PlanNode
from lumbung.wire.spec import JobSpec


def node(
    node_id: str,
    *,
    cpu_price: int = 10_000,
    gpu_price: int = 1_000_000,
    memory_mib: int = 32 * 1024,
    gpus: int = 0,
    draining: bool = False,
) -> Node:
    return Node(
        id=node_id,
        name=node_id,
        inventory=Inventory(
            gpus=[GpuInfo(model="NVIDIA L4", memory_mib=24 * 1024) for _ in range(gpus)],
            cpus=8,
            memory_mib=memory_mib,
            disk_free_mib=100 * 1024,
        ),
        price_micro_per_gpu_hour=gpu_price,
        price_micro_per_cpu_hour=cpu_price,
        slots=1,
        free_slots=1,
        draining=draining,
        registered_at=0.0,
        last_heartbeat_at=0.0,
    )


def snap(n: Node, *, online: bool = True, reliability: float = 1.0) -> NodeSnapshot:
    return NodeSnapshot(node=n, online=online, reliability=reliability)


def spec(max_price: int = 50_000, **fields: Any) -> JobSpec:
    return job(
        **{
            "command": ["true"],
            "grid": {},
            "max_price_micro_per_hour": max_price,
            "max_runtime_s": 3600,
            **fields,
        }
    )


# --- money ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (1_500_000, "1.5 cr"),
        (12_000, "0.012 cr"),
        (0, "0 cr"),
        (1, "0.000001 cr"),
        (2_000_000, "2 cr"),
        (1_234_567_890_000, "1,234,567.89 cr"),
        (-1_500_000, "-1.5 cr"),
        (-1, "-0.000001 cr"),
    ],
)
def test_credits_are_formatted_exactly(micro: int, text: str) -> None:
    assert format_credits(micro) == text


def test_huge_amounts_keep_every_micro_credit() -> None:
    assert format_credits(10**24 + 1) == f"{10**18:,}.000001 cr"


@pytest.mark.parametrize(
    ("price", "runtime_s", "tasks", "expected"),
    [
        (3600, 3600, 1, 3600),
        (1_000_000, 1800, 2, 1_000_000),
        (1, 1, 1, 1),  # 1/3600 of a micro-credit rounds up to one
        (1, 3600, 1, 1),
        (1, 3601, 1, 2),
        (0, 3600, 10, 0),
        (10**15, 7 * 24 * 3600, 10_000, 10**15 * 168 * 10_000),
    ],
)
def test_cost_rounds_up_to_whole_micro_credits(
    price: int, runtime_s: int, tasks: int, expected: int
) -> None:
    assert cost_micro(price, runtime_s, tasks) == expected


# --- the plan -------------------------------------------------------------------------------------


def test_fits_are_ranked_by_price_then_reliability_then_id() -> None:
    nodes = [
        snap(node("dear", cpu_price=30_000)),
        snap(node("flaky", cpu_price=10_000), reliability=0.5),
        snap(node("steady-b", cpu_price=10_000), reliability=0.9),
        snap(node("steady-a", cpu_price=10_000), reliability=0.9),
    ]
    plan = make_plan(spec(), nodes)
    assert [f.node_id for f in plan.fits] == ["steady-a", "steady-b", "flaky", "dear"]


def test_plan_node_carries_price_and_worst_cost_at_that_price() -> None:
    s = spec(max_price=100_000, resources={"cpus": 2}, max_runtime_s=5400, count=3)
    plan = make_plan(s, [snap(node("b", cpu_price=12_345), reliability=0.75)])
    assert plan.fits == [
        PlanNode(
            node_id="b",
            name="b",
            online=True,
            reliability=0.75,
            price_micro_per_hour=24_690,
            max_cost_micro=111_105,  # 24_690 * 1.5 h * 3 tasks
        )
    ]


def test_job_worst_case_is_at_its_own_price_limit_for_every_task() -> None:
    s = spec(max_price=1_000_001, max_runtime_s=1800, grid={"lr": [1, 2, 3]}, count=2)
    plan = make_plan(s, [])
    assert plan.task_count == 6
    # 1_000_001 * 0.5 h = 500_000.5 per task, rounded up per task (each task's budget): x 6.
    assert plan.max_cost_micro == 3_000_006


def test_job_worst_case_rounds_up() -> None:
    assert make_plan(spec(max_price=7, max_runtime_s=1), []).max_cost_micro == 1


def test_excluded_counts_each_constraint_and_a_node_can_count_twice() -> None:
    nodes = [
        snap(node("fits")),
        snap(node("off"), online=False),
        snap(node("small-off", memory_mib=512), online=False),
        snap(node("small", memory_mib=512)),
        snap(node("dear", cpu_price=60_000)),
    ]
    plan = make_plan(spec(resources={"memory_gb": 1}), nodes)
    assert plan.nodes_considered == 5
    assert [f.node_id for f in plan.fits] == ["fits"]
    assert plan.excluded == {"offline": 2, "too_little_memory": 2, "price_above_limit": 1}


def test_constraints_no_node_failed_are_absent_from_excluded() -> None:
    plan = make_plan(spec(), [snap(node("a")), snap(node("b"), online=False)])
    assert plan.excluded == {"offline": 1}


def test_explanation_names_the_fit_count_and_cheapest_node() -> None:
    nodes = [
        snap(node("node-a", cpu_price=20_000)),
        snap(node("node-b", cpu_price=12_000)),
        snap(node("node-c", cpu_price=40_000)),
        snap(node("node-d", cpu_price=60_000)),
        snap(node("node-e"), online=False),
    ]
    plan = make_plan(spec(), nodes)
    assert plan.explanation[0] == (
        "3 of 5 nodes fit; cheapest is node-b at 0.012 cr/hour "
        "(at most 0.012 cr for the whole job)."
    )
    assert plan.explanation[1] == (
        "2 excluded: 1 offline, 1 price above the limit (cheapest excluded asks 0.06 cr/hour)."
    )


def test_cheapest_excluded_price_is_the_lowest_among_nodes_above_the_limit() -> None:
    nodes = [snap(node("a", cpu_price=90_000)), snap(node("b", cpu_price=70_000))]
    plan = make_plan(spec(max_price=50_000), nodes)
    assert "2 price above the limit (cheapest excluded asks 0.07 cr/hour)" in plan.explanation[0]


def test_exclusion_reasons_are_listed_most_common_first() -> None:
    nodes = [
        snap(node("a"), online=False),
        snap(node("b", memory_mib=10)),
        snap(node("c", memory_mib=10)),
        snap(node("d", draining=True)),
    ]
    plan = make_plan(spec(resources={"memory_gb": 1}), nodes)
    assert plan.explanation[0] == (
        "No online node can run this job now; it will wait in the queue: "
        "2 too little memory, 1 offline, 1 draining."
    )


def test_explanation_without_exclusions_has_no_excluded_sentence() -> None:
    plan = make_plan(spec(), [snap(node("a"))])
    assert not any("excluded" in line for line in plan.explanation)


def test_empty_node_list_explains_that_the_job_will_wait() -> None:
    plan = make_plan(spec(), [])
    assert plan.fits == []
    assert plan.excluded == {}
    assert plan.nodes_considered == 0
    assert plan.explanation[0] == (
        "No online node can run this job now; it will wait in the queue: no nodes are registered."
    )


def test_explanation_states_the_worst_case_at_the_price_limit() -> None:
    s = spec(max_price=1_500_000, max_runtime_s=5400, count=2)
    plan = make_plan(s, [])
    assert plan.explanation[-1] == (
        "Worst case at the job's price limit: 4.5 cr (2 tasks x up to 1h30m x 1.5 cr/hour), "
        "held in escrow until settled."
    )


def test_single_task_worst_case_reads_in_the_singular() -> None:
    plan = make_plan(spec(max_price=1_000_000, max_runtime_s=90), [])
    assert "(1 task x up to 1m30s x 1 cr/hour)" in plan.explanation[-1]


def test_gpu_job_is_priced_per_gpu() -> None:
    s = spec(max_price=3_000_000, resources={"gpus": 2, "cpus": 1})
    plan = make_plan(s, [snap(node("g", gpus=2, gpu_price=1_000_000, cpu_price=10_000))])
    assert plan.fits[0].price_micro_per_hour == 2_010_000
    assert plan.fits[0].max_cost_micro == 2_010_000


def test_plan_round_trips_through_its_wire_shape() -> None:
    plan = make_plan(spec(), [snap(node("a")), snap(node("b"), online=False)])
    assert Plan.model_validate_json(plan.model_dump_json()) == plan


# --- waiting reason -------------------------------------------------------------------------------


def test_no_waiting_reason_when_an_online_node_fits() -> None:
    plan = make_plan(spec(), [snap(node("a")), snap(node("b"), online=False)])
    assert waiting_reason(plan) is None


def test_waiting_reason_names_constraints_with_counts() -> None:
    nodes = [
        snap(node("a", memory_mib=10)),
        snap(node("b", memory_mib=10)),
        snap(node("c"), online=False),
    ]
    plan = make_plan(spec(resources={"memory_gb": 1}), nodes)
    assert waiting_reason(plan) == "no online node fits: 2 too_little_memory, 1 offline"


def test_waiting_reason_with_no_nodes_at_all() -> None:
    assert waiting_reason(make_plan(spec(), [])) == "no online node fits: no nodes are registered"


def test_waiting_reason_ignores_fitting_nodes_that_are_offline() -> None:
    offline_fit = PlanNode(
        node_id="a",
        name="a",
        online=False,
        reliability=1.0,
        price_micro_per_hour=1,
        max_cost_micro=1,
    )
    plan = Plan(
        task_count=1,
        fits=[offline_fit],
        excluded={"too_few_cpus": 1},
        nodes_considered=2,
        max_cost_micro=1,
        explanation=[],
    )
    assert waiting_reason(plan) == "no online node fits: 1 too_few_cpus"


def test_verification_is_costed_on_top_of_the_work_and_explained() -> None:
    nodes = [snap(node("cheap", cpu_price=20_000)), snap(node("dear", cpu_price=40_000))]
    plain = make_plan(spec(count=4), nodes)
    assert (plain.verification_extra_node_hours, plain.verification_extra_micro) == (0.0, 0)
    assert "Verification: none" in " ".join(plain.explanation)

    replicated = make_plan(spec(count=4, verify={"mode": "replicate", "replicas": 3}), nodes)
    # Two more runs of each of 4 one-hour tasks, at the cheapest fitting price.
    assert replicated.verification_extra_node_hours == 8.0
    assert replicated.verification_extra_micro == 8 * 20_000
    assert replicated.max_cost_micro == 4 * 4 * 50_000  # 4 runs each may be needed

    adaptive = make_plan(spec(count=4, verify={"mode": "adaptive"}), nodes)
    # At most one check of each, when every node is new.
    assert adaptive.verification_extra_node_hours == 4.0
    assert adaptive.verification_extra_micro == 4 * 20_000
    assert adaptive.max_cost_micro == 4 * 3 * 50_000
    assert "adaptive" in " ".join(adaptive.explanation)
