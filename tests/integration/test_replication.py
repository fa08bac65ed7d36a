"""Replicated run tasks (``verify.mode: replicate`` and ``adaptive``), in-process on every store.

A cheating node returns a made-up output; the honest ones agree. The quorum keeps the honest
result, the cheat's replica is proven wrong and earns nothing, and only agreeing replicas are
paid. One second of work earns 10,000 micro-credits; the hub keeps 5%.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from factories import run_job
from hubkit import Actor, Hub, claim, make_hub, run_for

from lumbung.crypto.keys import verify_signature
from lumbung.hub import escrow, replication
from lumbung.ids import actor_id
from lumbung.ledger.entries import (
    SignedEntry,
    Slash,
    Stake,
    Unstake,
    decode_leaf,
    leaf_bytes,
    sign_entry,
)
from lumbung.market.model import PENDING_VERDICT, JobState
from lumbung.market.plan import escrow_micro
from lumbung.store.protocol import Changes, Store
from lumbung.verify.stake import SLASH_MULTIPLE
from lumbung.wire.commitment import ExecutionClass, commitment_body, signed_bytes
from lumbung.wire.spec import validate_spec

PRICE = 36_000_000  # micro-credits per CPU-hour: 10,000 per second on one CPU
PER_S = 10_000
FEE_BPS = 500
BUDGET = PRICE  # one run may last max_runtime_s = 3600 s at the price limit
# A node that claims and loses the draw claims again; this many tries make a loss of every
# one vanishingly unlikely (each is won with probability at least 1/3 here).
_DRAWS = 200


@pytest.fixture
def hub(store: Store, tmp_path: Path) -> Hub:
    return make_hub(store, tmp_path, fee_bps=FEE_BPS)


def replicated(**verify: Any) -> dict[str, Any]:
    return run_job(
        max_price_micro_per_hour=PRICE,
        max_runtime_s=3600,
        outputs=["result.json"],
        verify={"mode": "replicate", **verify},
    )


def lease(node: Actor) -> dict[str, Any]:
    """A lease for ``node``: claims until it wins the draw among the nodes that may take it."""
    for _ in range(_DRAWS):
        task = claim(node)
        if task is not None:
            return task
    raise AssertionError("the node never won a replica it may take")


CLASS = ExecutionClass(
    device="cpu",
    device_model="test CPU",
    platform="Linux-x86_64",
    python="3.11.2",
    threads=1,
    deterministic=True,
)


def commitment(
    node: Actor, task: dict[str, Any], outputs: dict[str, str], where: ExecutionClass = CLASS
) -> dict[str, Any]:
    """The node's signed claim on ``outputs``, as a node makes it."""
    body = commitment_body(
        job_id=task["job_id"],
        task_id=task["task_id"],
        attempt=task["attempt"],
        node=node.id,
        outputs=outputs,
        execution_class=where,
    )
    return {
        "execution_class": where.model_dump(mode="json"),
        "public_key": node.identity.public_key_raw.hex(),
        "signature": node.identity.sign(signed_bytes(body)).hex(),
    }


def finish(
    node: Actor,
    task: dict[str, Any],
    result: dict[str, Any],
    runtime_s: float,
    where: ExecutionClass = CLASS,
) -> None:
    sha = node.upload(json.dumps(result).encode())
    run_for(node, task["task_id"], runtime_s)
    outputs = {"result.json": sha}
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/complete",
        {
            "attempt": task["attempt"],
            "exit_code": 0,
            "outputs": outputs,
            "runtime_s": runtime_s,
            "commitment": commitment(node, task, outputs, where),
        },
        expect=204,
    )


def log_entries(hub: Hub) -> list[SignedEntry]:
    log = hub.ctx.log
    assert log is not None
    return [decode_leaf(leaf) for leaf in log.store.leaves(0, log.size)]


def stake(hub: Hub, node: Actor, amount: int) -> None:
    """The node stakes ``amount`` (minted for it first), through the API as a provider does."""
    assert hub.ctx.log is not None
    hub.ctx.log.mint(node.id, amount)
    seq = hub.ctx.log.account(node.id)[2] + 1
    entry = Stake(author=node.id, seq=seq, at=int(hub.clock() * 1000), amount=amount)
    leaf = base64.b64encode(leaf_bytes(sign_entry(entry, node.identity))).decode()
    node.call("POST", "/v1/ledger/entries", {"entries": [leaf]})


def staked(hub: Hub, node: Actor) -> int:
    assert hub.ctx.log is not None
    return hub.ctx.log.account(node.id)[1]


def balance(hub: Hub, actor: Actor) -> int:
    assert hub.ctx.log is not None
    return hub.ctx.log.account(actor.id)[0]


def net(earned: int) -> int:
    return earned - earned * FEE_BPS // 10_000


def verdicts(hub: Hub, job_id: str) -> dict[str, str | None]:
    return {t.node_id or "": t.verdict for t in hub.ctx.store.list_tasks(job_id) if t.node_id}


HONEST = {"accuracy": 0.93, "loss": 0.21}
MADE_UP = {"accuracy": 0.99, "loss": 0.01}


def test_a_cheat_is_outvoted_by_a_replica_on_a_third_node_and_only_the_agreeing_are_paid(
    hub: Hub,
) -> None:
    honest = hub.node("honest", price_cpu=PRICE)
    cheat = hub.node("cheat", price_cpu=PRICE)
    stake(hub, honest, 20 * BUDGET)
    stake(hub, cheat, 20 * BUDGET)
    consumer = hub.actor()
    job = consumer.submit(replicated())["job"]
    job_id = job["id"]
    # Two replicas to start, room for a third: the escrow locks all three runs.
    assert len(job["tasks"]) == 2
    assert job["escrow"]["locked_micro"] == 3 * BUDGET

    first, second = lease(honest), lease(cheat)
    assert first["index"] == second["index"] == 0
    assert first["task_id"] != second["task_id"]
    finish(honest, first, HONEST, 5.0)
    finish(cheat, second, MADE_UP, 2.0)

    # They disagree: a third replica is queued, and neither of the two may take it.
    view = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert view["state"] == "running"
    assert sorted(t["replica"] for t in view["tasks"]) == [0, 1, 2]
    for _ in range(20):
        assert claim(honest) is None
        assert claim(cheat) is None
    assert balance(hub, honest) == balance(hub, cheat) == 0  # held until the verdict

    referee = hub.node("referee", price_cpu=PRICE)
    third = lease(referee)
    finish(referee, third, HONEST, 4.0)

    view = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert view["state"] == "succeeded"
    assert verdicts(hub, job_id) == {
        honest.id: "agreed",
        cheat.id: "wrong",
        referee.id: "agreed",
    }
    assert balance(hub, honest) == net(5 * PER_S)
    assert balance(hub, referee) == net(4 * PER_S)
    assert balance(hub, cheat) == 0
    # The proven wrong result costs 12 task budgets of stake; the honest keep all of theirs.
    assert staked(hub, cheat) == 20 * BUDGET - SLASH_MULTIPLE * BUDGET
    assert staked(hub, honest) == 20 * BUDGET
    [slash] = [e.entry for e in log_entries(hub) if isinstance(e.entry, Slash)]
    assert (slash.node, slash.amount) == (cheat.id, SLASH_MULTIPLE * BUDGET)
    assert second["task_id"] in slash.reason
    # Half of it goes to the consumer who was served the wrong result.
    assert balance(hub, consumer) == 3 * BUDGET - 9 * PER_S + SLASH_MULTIPLE * BUDGET // 2
    paid = 9 * PER_S
    assert view["escrow"]["refunded_micro"] == 3 * BUDGET - paid

    results = consumer.call("GET", f"/v1/jobs/{job_id}/results")
    agreed = [t for t in results["tasks"] if t["verdict"] == "agreed"]
    honest_sha = hashlib.sha256(json.dumps(HONEST).encode()).hexdigest()
    assert {t["outputs"]["result.json"] for t in agreed} == {honest_sha}


def test_replicas_that_cannot_agree_fail_the_job_and_nobody_is_paid(hub: Hub) -> None:
    one = hub.node("one", price_cpu=PRICE)
    other = hub.node("other", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(replicated(max_replicas=2))["job"]["id"]
    finish(one, lease(one), HONEST, 3.0)
    finish(other, lease(other), MADE_UP, 3.0)

    view = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert view["state"] == "failed"
    assert "could not be verified" in view["error"]
    assert set(verdicts(hub, job_id).values()) == {"unverified"}
    assert balance(hub, one) == balance(hub, other) == 0
    assert balance(hub, consumer) == 2 * BUDGET  # all of it back


def test_across_execution_classes_numbers_agree_within_the_tolerance_and_past_it_are_wrong(
    hub: Hub,
) -> None:
    nodes = [hub.node(f"n{i}", price_cpu=PRICE) for i in range(3)]
    consumer = hub.actor()
    spec = replicated(replicas=3, quorum=2, compare="numeric", rtol=1e-6)
    job_id = consumer.submit(spec)["job"]["id"]
    leases = {node.id: lease(node) for node in nodes}
    cpus = [CLASS.model_copy(update={"device_model": f"CPU model {i}"}) for i in range(3)]
    finish(nodes[0], leases[nodes[0].id], {"accuracy": 0.93, "loss": 0.21}, 1.0, cpus[0])
    finish(nodes[1], leases[nodes[1].id], {"accuracy": 0.9300000001, "loss": 0.21}, 1.0, cpus[1])
    finish(nodes[2], leases[nodes[2].id], {"accuracy": 0.94, "loss": 0.21}, 1.0, cpus[2])
    assert verdicts(hub, job_id) == {
        nodes[0].id: "agreed",
        nodes[1].id: "agreed",
        nodes[2].id: "wrong",
    }
    assert consumer.call("GET", f"/v1/jobs/{job_id}")["state"] == "succeeded"
    assert [balance(hub, n) for n in nodes] == [net(PER_S), net(PER_S), 0]


def test_within_one_execution_class_even_the_last_bit_must_match(hub: Hub) -> None:
    nodes = [hub.node(f"n{i}", price_cpu=PRICE) for i in range(2)]
    consumer = hub.actor()
    spec = replicated(max_replicas=2, compare="numeric", rtol=1e-6)
    job_id = consumer.submit(spec)["job"]["id"]
    leases = [lease(node) for node in nodes]
    # Same class, so an honest task gives the same bytes: a difference is a wrong result.
    finish(nodes[0], leases[0], {"accuracy": 0.93}, 1.0)
    finish(nodes[1], leases[1], {"accuracy": 0.9300000001}, 1.0)
    view = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert view["state"] == "failed"
    assert set(verdicts(hub, job_id).values()) == {"unverified"}


def test_a_node_never_holds_two_replicas_of_one_task(hub: Hub) -> None:
    busy = hub.node("busy", price_cpu=PRICE, cpus=4)
    consumer = hub.actor()
    job_id = consumer.submit(replicated())["job"]["id"]
    task = lease(busy)
    finish(busy, task, HONEST, 1.0)
    for _ in range(20):
        assert claim(busy) is None  # the other replica waits for another node
    other = hub.node("other", price_cpu=PRICE)
    finish(other, lease(other), HONEST, 1.0)
    assert consumer.call("GET", f"/v1/jobs/{job_id}")["state"] == "succeeded"


def test_a_hub_that_stopped_before_judging_judges_at_reconcile(hub: Hub) -> None:
    one, other = hub.node("one", price_cpu=PRICE), hub.node("other", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(replicated())["job"]["id"]
    finish(one, lease(one), HONEST, 2.0)
    finish(other, lease(other), HONEST, 2.0)
    # As if the hub had stopped after the last replica's commit: its verdicts never written.
    tasks = hub.ctx.store.list_tasks(job_id)
    for task in tasks:
        task.verdict = PENDING_VERDICT
    job = hub.ctx.store.get_job(job_id)
    job.state = JobState.RUNNING
    hub.ctx.store.apply(Changes(jobs=[job], tasks=tasks))

    escrow.reconcile_job(hub.ctx, job_id)
    assert set(verdicts(hub, job_id).values()) == {replication.AGREED}
    assert hub.ctx.store.get_job(job_id).state.value == "succeeded"
    assert balance(hub, one) == balance(hub, other) == net(2 * PER_S)


@pytest.mark.parametrize(
    ("verify", "field"),
    [
        ({"mode": "replicate", "quorum": 3}, "spec.verify.quorum"),
        ({"mode": "none", "replicas": 3}, "spec.verify.replicas"),
        ({"mode": "replicate", "rtol": 0.1}, "spec.verify.rtol"),
        ({"mode": "replicate", "replicas": 3, "max_replicas": 2}, "spec.verify.max_replicas"),
        ({"mode": "adaptive", "replicas": 3}, "spec.verify.replicas"),
        ({"mode": "adaptive", "max_replicas": 1}, "spec.verify.max_replicas"),
        ({"mode": "sometimes"}, "spec.verify.mode"),
    ],
)
def test_a_verify_section_that_does_not_hold_is_refused_naming_its_field(
    hub: Hub, verify: dict[str, Any], field: str
) -> None:
    consumer = hub.actor()
    body = run_job(max_price_micro_per_hour=PRICE, verify=verify)
    error = consumer.call("POST", "/v1/jobs/plan", {"spec": body}, expect=422)
    assert error["field"] == field, error


def test_the_plan_says_what_verification_adds_and_the_escrow_covers_every_run(hub: Hub) -> None:
    hub.node("cheap", price_cpu=PRICE // 2)
    consumer = hub.actor()
    spec = replicated(replicas=3, quorum=2)
    plan = consumer.call("POST", "/v1/jobs/plan", {"spec": spec})
    assert plan["max_cost_micro"] == escrow_micro(validate_spec(spec)) == 4 * BUDGET
    assert plan["verification_extra_node_hours"] == 2.0
    assert plan["verification_extra_micro"] == 2 * (PRICE // 2)
    line = next(line for line in plan["explanation"] if line.startswith("Verification:"))
    assert "3 distinct nodes" in line
    assert "a quorum of 2" in line
    assert "not paid" in line


def test_each_result_is_committed_in_the_ledger_and_a_forged_or_missing_commitment_is_refused(
    hub: Hub,
) -> None:
    node, other = hub.node("node", price_cpu=PRICE), hub.node("other", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(replicated())["job"]["id"]
    task = lease(node)
    sha = node.upload(json.dumps(HONEST).encode())
    outputs = {"result.json": sha}
    report = {"attempt": task["attempt"], "exit_code": 0, "outputs": outputs, "runtime_s": 1.0}
    path = f"/v1/tasks/{task['task_id']}/complete"

    missing = node.call("POST", path, report, expect=422)
    assert missing["field"] == "commitment"
    # Signed for other outputs than those reported: the node claims one thing, signs another.
    other_outputs = {"result.json": "0" * 64}
    forged = {**report, "commitment": commitment(node, task, other_outputs)}
    assert node.call("POST", path, forged, expect=422)["field"] == "commitment.signature"
    # Another node's key, signing for this one.
    stolen = {**report, "commitment": commitment(other, task, outputs)}
    assert node.call("POST", path, stolen, expect=422)["field"] == "commitment.public_key"
    assert hub.ctx.store.get_task(task["task_id"]).state.value == "running"  # nothing written

    finish(node, task, HONEST, 1.0)
    entries = [e.entry for e in log_entries(hub) if e.entry.kind.value == "result_commitment"]
    [entry] = entries
    assert entry.body["task_id"] == task["task_id"]
    assert entry.body["node"] == node.id
    assert entry.body["outputs"] == outputs
    assert entry.body["execution_class"] == CLASS.model_dump(mode="json")
    # Anyone can check it: the key is the node's, and it signed exactly this body.
    key = bytes.fromhex(entry.body["public_key"])
    assert actor_id(key) == node.id
    signed = {k: v for k, v in entry.body.items() if k not in ("public_key", "signature")}
    verify_signature(key, bytes.fromhex(entry.body["signature"]), signed_bytes(signed))
    assert entry.body["job_id"] == job_id


# --- adaptive replication -----------------------------------------------------------------------

WORKLOAD = "run:cpu"


def adaptive(**verify: Any) -> dict[str, Any]:
    return replicated(**{"mode": "adaptive", **verify})


def streak(hub: Hub, node: Actor) -> int:
    return hub.ctx.store.valid_streak(node.id, WORKLOAD)


def earn(hub: Hub, node: Actor, valid_results: int) -> None:
    hub.ctx.store.record_results([(node.id, WORKLOAD, True)] * valid_results, hub.clock())


def test_a_new_nodes_result_is_always_checked_and_agreement_counts_for_both(hub: Hub) -> None:
    worker, checker = hub.node("worker", price_cpu=PRICE), hub.node("checker", price_cpu=PRICE)
    consumer = hub.actor()
    job = consumer.submit(adaptive())["job"]
    assert len(job["tasks"]) == 1  # runs once; a check, when drawn, is added
    assert job["escrow"]["locked_micro"] == 3 * BUDGET  # the run, a check, a tie-break
    finish(worker, lease(worker), HONEST, 5.0)

    # Under 10 valid results in a row, every result is checked, on another node.
    view = consumer.call("GET", f"/v1/jobs/{job['id']}")
    assert view["state"] == "running"
    assert sorted(t["replica"] for t in view["tasks"]) == [0, 1]
    assert balance(hub, worker) == 0  # held until the check
    for _ in range(20):
        assert claim(worker) is None
    finish(checker, lease(checker), HONEST, 3.0)

    assert verdicts(hub, job["id"]) == {worker.id: "agreed", checker.id: "agreed"}
    assert consumer.call("GET", f"/v1/jobs/{job['id']}")["state"] == "succeeded"
    assert (balance(hub, worker), balance(hub, checker)) == (net(5 * PER_S), net(3 * PER_S))
    assert (streak(hub, worker), streak(hub, checker)) == (1, 1)
    listed = {n["id"]: n["valid_streaks"] for n in consumer.call("GET", "/v1/nodes")}
    assert listed[worker.id] == {WORKLOAD: 1}


def test_a_trusted_nodes_result_is_checked_only_when_the_draw_says(hub: Hub) -> None:
    worker = hub.node("worker", price_cpu=PRICE)
    earn(hub, worker, 20)  # checked with probability max(1/20, 9%) = 9%
    consumer = hub.actor()
    hub.ctx.draw = lambda: 0.5
    job_id = consumer.submit(adaptive())["job"]["id"]
    finish(worker, lease(worker), HONEST, 4.0)
    assert verdicts(hub, job_id) == {worker.id: "trusted"}
    view = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert view["state"] == "succeeded"
    assert len(view["tasks"]) == 1
    assert balance(hub, worker) == net(4 * PER_S)
    assert streak(hub, worker) == 20  # an unchecked result proves nothing either way

    hub.ctx.draw = lambda: 0.08  # under the floor: checked, however long the record
    checked = consumer.submit(adaptive())["job"]["id"]
    finish(worker, lease(worker), HONEST, 4.0)
    assert len(consumer.call("GET", f"/v1/jobs/{checked}")["tasks"]) == 2


def test_a_trusted_node_caught_cheating_by_a_check_starts_again_from_zero_unpaid(hub: Hub) -> None:
    cheat, checker = hub.node("cheat", price_cpu=PRICE), hub.node("checker", price_cpu=PRICE)
    earn(hub, cheat, 30)
    stake(hub, cheat, BUDGET)  # less than a slash: it loses all of it
    hub.ctx.draw = lambda: 0.0
    consumer = hub.actor()
    job_id = consumer.submit(adaptive())["job"]["id"]
    finish(cheat, lease(cheat), MADE_UP, 6.0)
    finish(checker, lease(checker), HONEST, 2.0)
    # One against one: a third run settles which is wrong, on a node that ran neither.
    assert claim(cheat) is None
    assert claim(checker) is None
    referee = hub.node("referee", price_cpu=PRICE)
    finish(referee, lease(referee), HONEST, 2.0)

    assert verdicts(hub, job_id) == {cheat.id: "wrong", checker.id: "agreed", referee.id: "agreed"}
    assert consumer.call("GET", f"/v1/jobs/{job_id}")["state"] == "succeeded"
    assert balance(hub, cheat) == 0
    assert (streak(hub, cheat), streak(hub, checker), streak(hub, referee)) == (0, 1, 1)
    assert balance(hub, consumer) == 3 * BUDGET - 4 * PER_S + BUDGET // 2
    assert staked(hub, cheat) == 0


def test_a_node_cannot_unstake_while_a_result_of_its_waits_for_its_check(hub: Hub) -> None:
    cheat, checker = hub.node("cheat", price_cpu=PRICE), hub.node("checker", price_cpu=PRICE)
    stake(hub, cheat, 20 * BUDGET)
    consumer = hub.actor()
    consumer.submit(adaptive())
    finish(cheat, lease(cheat), MADE_UP, 2.0)  # no lease any more, but a check is pending
    assert hub.ctx.log is not None
    seq = hub.ctx.log.account(cheat.id)[2] + 1
    unstake = Unstake(author=cheat.id, seq=seq, at=int(hub.clock() * 1000), amount=20 * BUDGET)
    leaf = base64.b64encode(leaf_bytes(sign_entry(unstake, cheat.identity))).decode()
    refused = cheat.call("POST", "/v1/ledger/entries", {"entries": [leaf]}, expect=409)
    assert "waiting for their check" in refused["message"]
    assert staked(hub, cheat) == 20 * BUDGET
    finish(checker, lease(checker), HONEST, 2.0)
    referee = hub.node("referee", price_cpu=PRICE)
    finish(referee, lease(referee), HONEST, 2.0)
    assert staked(hub, cheat) == 20 * BUDGET - SLASH_MULTIPLE * BUDGET
