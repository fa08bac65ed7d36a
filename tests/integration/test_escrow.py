"""Money in the job flow, in-process on every store: lock at submit, pay kept work, refund the rest.

Prices are chosen so that one second of work earns 10,000 micro-credits (36 cr per hour), and
the hub keeps a 5% fee, so every expected amount below is exact arithmetic anyone can redo.
"""

from __future__ import annotations

import asyncio
import base64
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from factories import run_job
from hubkit import LEASE_S, Actor, Hub, archive, claim, make_hub, run_for

from lumbung.errors import Conflict, Rejected
from lumbung.hub import escrow
from lumbung.hub.app import reconcile_in_turns
from lumbung.hub.context import HubContext
from lumbung.hub.jobs import submit
from lumbung.hub.leases import expire_leases
from lumbung.hub.ledger import LogService
from lumbung.ids import new_id
from lumbung.ledger.entries import EscrowLock, Stake, Unstake, leaf_bytes, sign_entry
from lumbung.market.plan import escrow_micro
from lumbung.store.protocol import Changes, Store
from lumbung.wire.spec import validate_spec

PRICE = 36_000_000  # micro-credits per CPU-hour: 10,000 per second on one CPU
PER_S = 10_000
FEE_BPS = 500
BUDGET = PRICE  # one task may run max_runtime_s = 3600 s at the price limit


@pytest.fixture
def hub(store: Store, tmp_path: Path) -> Hub:
    return make_hub(store, tmp_path, fee_bps=FEE_BPS)


job_spec = functools.partial(run_job, max_price_micro_per_hour=PRICE, max_runtime_s=3600)


def log_of(hub: Hub) -> LogService:
    assert hub.ctx.log is not None
    return hub.ctx.log


def balance(hub: Hub, actor: Actor | str) -> int:
    return log_of(hub).account(actor if isinstance(actor, str) else actor.id)[0]


def checkpoint(node: Actor, task: dict[str, Any], runtime_s: float, prev: str | None) -> str:
    state = archive(f"{task['task_id']}-{runtime_s}".encode())
    sha = node.upload(state)
    run_for(node, task["task_id"], runtime_s)  # an honest node: it held the lease that long
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/checkpoints",
        {
            "attempt": task["attempt"],
            "sha256": sha,
            "size_bytes": len(state),
            "prev_sha256": prev,
            "progress": 0.5,
            "runtime_s": runtime_s,
        },
        expect=204,
    )
    return sha


def complete(node: Actor, task: dict[str, Any], runtime_s: float, exit_code: int = 0) -> None:
    run_for(node, task["task_id"], runtime_s)
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/complete",
        {"attempt": task["attempt"], "exit_code": exit_code, "outputs": {}, "runtime_s": runtime_s},
        expect=204,
    )


def net(earned: int) -> int:
    return earned - earned * FEE_BPS // 10_000


def test_submit_locks_the_worst_case_and_a_finished_job_pays_kept_work_and_refunds_the_rest(
    hub: Hub,
) -> None:
    node = hub.node("n1", price_cpu=PRICE)
    consumer = hub.actor()
    job = consumer.submit(job_spec())["job"]
    assert job["escrow"] == {
        "locked_micro": BUDGET,
        "released_micro": 0,
        "fees_micro": 0,
        "refunded_micro": 0,
        "remaining_micro": BUDGET,
    }
    assert balance(hub, consumer) == 0  # funded with exactly the lock

    task = claim(node)
    assert task is not None
    checkpoint(node, task, 3.0, None)
    assert balance(hub, node) == net(3 * PER_S)  # paid as soon as the checkpoint keeps work
    complete(node, task, 5.0)

    view = consumer.call("GET", f"/v1/jobs/{job['id']}")
    earned = 5 * PER_S
    assert view["work"][0]["kept_cost_micro"] == earned
    assert balance(hub, node) == net(earned)
    assert view["escrow"] == {
        "locked_micro": BUDGET,
        "released_micro": net(earned),
        "fees_micro": earned - net(earned),
        "refunded_micro": BUDGET - earned,
        "remaining_micro": 0,
    }
    assert balance(hub, consumer) == BUDGET - earned


def test_a_node_that_vanishes_is_paid_only_for_work_its_checkpoint_kept(hub: Hub) -> None:
    first = hub.node("first", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(job_spec())["job"]["id"]
    task = claim(first)
    assert task is not None
    last = checkpoint(first, task, 4.0, None)
    hub.clock.advance(LEASE_S + 1)  # it ran on, then went silent: nothing after 4 s is kept
    assert expire_leases(hub.ctx) == 1

    second = hub.node("second", price_cpu=PRICE)
    resumed = claim(second)
    assert resumed is not None
    assert resumed["resume_from"] == last
    complete(second, resumed, 6.0)

    assert balance(hub, first) == net(4 * PER_S)
    assert balance(hub, second) == net(6 * PER_S)
    state = log_of(hub).escrow(job_id)
    assert state.remaining == 0
    assert state.locked == state.released + state.fees + state.refunded
    assert state.refunded == BUDGET - 10 * PER_S


def test_cancel_pays_what_was_kept_and_refunds_the_rest(hub: Hub) -> None:
    node = hub.node("n1", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(job_spec())["job"]["id"]
    task = claim(node)
    assert task is not None
    checkpoint(node, task, 2.0, None)
    view = consumer.call("POST", f"/v1/jobs/{job_id}/cancel")
    assert view["escrow"]["remaining_micro"] == 0
    assert view["escrow"]["refunded_micro"] == BUDGET - 2 * PER_S
    assert balance(hub, node) == net(2 * PER_S)
    assert balance(hub, consumer) == BUDGET - 2 * PER_S


def test_a_failed_job_pays_nothing_for_work_never_kept(hub: Hub) -> None:
    node = hub.node("n1", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(job_spec(retries=0))["job"]["id"]
    task = claim(node)
    assert task is not None
    complete(node, task, 7.0, exit_code=1)
    assert consumer.call("GET", f"/v1/jobs/{job_id}")["state"] == "failed"
    assert balance(hub, node) == 0
    assert balance(hub, consumer) == BUDGET


def test_a_task_earns_at_most_its_budget_over_all_its_attempts(hub: Hub) -> None:
    node = hub.node("n1", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(job_spec(max_runtime_s=10))["job"]["id"]
    budget = 10 * PER_S
    task = claim(node)
    assert task is not None
    checkpoint(node, task, 8.0, None)
    hub.clock.advance(LEASE_S + 1)
    expire_leases(hub.ctx)
    again = claim(node)
    assert again is not None
    complete(node, again, 9.0)  # 17 s kept in all, but the job promised at most 10 s a task
    assert log_of(hub).escrow(job_id).released == net(budget)
    assert balance(hub, consumer) == 0


def test_a_short_balance_refuses_the_submission_and_stores_nothing(hub: Hub) -> None:
    consumer = hub.actor()
    log_of(hub).mint(consumer.id, BUDGET - 1)
    size = log_of(hub).size
    leaf = consumer.escrow(job_spec(), fund=False)
    body = consumer.call("POST", "/v1/jobs", {"spec": job_spec(), "escrow": leaf}, expect=422)
    assert body["field"] == "escrow.entry.amount"
    assert "insufficient funds" in body["message"]
    assert consumer.call("GET", "/v1/jobs") == []
    assert log_of(hub).size == size


def _lock(consumer: Actor, hub: Hub, **fields: Any) -> str:
    values: dict[str, Any] = {
        "author": consumer.id,
        "seq": log_of(hub).account(consumer.id)[2] + 1,
        "at": int(hub.clock() * 1000),
        "job_id": new_id("job"),
        "amount": BUDGET,
    }
    values.update(fields)
    signed = sign_entry(EscrowLock(**values), consumer.identity)
    return base64.b64encode(leaf_bytes(signed)).decode()


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"amount": BUDGET - 1}, 422, "escrow.entry.amount"),
        ({"amount": BUDGET + 1}, 422, "escrow.entry.amount"),
        ({"seq": 5}, 409, "escrow.entry.seq"),
    ],
)
def test_a_wrong_escrow_is_refused_naming_the_field(
    hub: Hub, fields: dict[str, Any], status: int, field: str
) -> None:
    consumer = hub.actor()
    log_of(hub).mint(consumer.id, 2 * BUDGET)
    size = log_of(hub).size
    body = {"spec": job_spec(), "escrow": _lock(consumer, hub, **fields)}
    assert consumer.call("POST", "/v1/jobs", body, expect=status)["field"] == field
    assert consumer.call("GET", "/v1/jobs") == []
    assert log_of(hub).size == size


def test_an_escrow_signed_by_someone_else_or_of_another_kind_is_refused(hub: Hub) -> None:
    consumer, other = hub.actor(), hub.actor()
    log_of(hub).mint(other.id, BUDGET)
    stolen = {"spec": job_spec(), "escrow": _lock(other, hub)}
    assert consumer.call("POST", "/v1/jobs", stolen, expect=422)["field"] == "escrow.entry.author"
    stake = sign_entry(Stake(author=consumer.id, seq=1, at=1, amount=5), consumer.identity)
    wrong_kind = {"spec": job_spec(), "escrow": base64.b64encode(leaf_bytes(stake)).decode()}
    assert consumer.call("POST", "/v1/jobs", wrong_kind, expect=422)["field"] == "escrow.entry.kind"
    garbage = {"spec": job_spec(), "escrow": "not base64!"}
    assert consumer.call("POST", "/v1/jobs", garbage, expect=422)["field"] == "escrow"
    assert balance(hub, other) == BUDGET


def test_a_job_id_is_used_once(hub: Hub) -> None:
    consumer = hub.actor()
    log_of(hub).mint(consumer.id, 2 * BUDGET)
    job_id = new_id("job")
    consumer.call(
        "POST",
        "/v1/jobs",
        {"spec": job_spec(), "escrow": _lock(consumer, hub, job_id=job_id)},
        expect=201,
    )
    again = {"spec": job_spec(), "escrow": _lock(consumer, hub, job_id=job_id)}
    assert consumer.call("POST", "/v1/jobs", again, expect=409)["field"] == "escrow.entry.job_id"
    assert balance(hub, consumer) == BUDGET


def test_concurrent_submissions_never_overspend(hub: Hub) -> None:
    consumer = hub.actor()
    log_of(hub).mint(consumer.id, 3 * BUDGET - 1)  # enough for two jobs, not three
    parsed = validate_spec(job_spec())
    locks = [
        sign_entry(
            EscrowLock(
                author=consumer.id, seq=seq, at=1, job_id=new_id("job"), amount=escrow_micro(parsed)
            ),
            consumer.identity,
        )
        for seq in range(1, 7)
    ]

    def attempt(signed: Any) -> str:
        leaf = base64.b64encode(leaf_bytes(signed)).decode()
        # Sequence numbers arrive out of order under concurrency; retry until it is our turn.
        for _ in range(200):
            try:
                submit(hub.ctx, consumer.id, parsed, leaf)
                return "ok"
            except Conflict:
                continue
            except Rejected as exc:
                return exc.field or ""
        return "gave up"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(attempt, locks[:3]))
    assert sorted(outcomes) == ["escrow.entry.amount", "ok", "ok"]
    assert balance(hub, consumer) == BUDGET - 1
    assert len(hub.ctx.store.list_jobs(consumer.id)) == 2


def _in_turns(ctx: HubContext) -> None:
    asyncio.run(reconcile_in_turns(ctx))


# At start-up the hub reconciles in one go; its reaper, one job at a time between requests.
@pytest.mark.parametrize("reconcile", [escrow.reconcile, _in_turns], ids=["start", "reaper"])
def test_reconcile_pays_work_a_crash_left_unpaid_and_refunds_orphan_locks(
    hub: Hub, reconcile: Callable[[HubContext], object]
) -> None:
    node = hub.node("n1", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(job_spec())["job"]["id"]
    task = claim(node)
    assert task is not None
    # The hub stopped after the store kept 4 s of work but before the ledger paid it.
    work = hub.ctx.store.get_work(task["task_id"], task["attempt"])
    work.kept_s = 4.0
    hub.ctx.store.apply(Changes(work=[work]))
    assert balance(hub, node) == 0
    # And a submission stopped after its lock, before its job was stored.
    log_of(hub).mint(consumer.id, BUDGET)
    orphan = escrow.decode_escrow(_lock(consumer, hub))
    log_of(hub).append([orphan])

    reconcile(hub.ctx)
    assert balance(hub, node) == net(4 * PER_S)
    assert balance(hub, consumer) == 0  # the orphan's submission may still be on its way
    hub.clock.advance(escrow.ORPHAN_LOCK_AGE_S + 1)
    reconcile(hub.ctx)
    assert balance(hub, consumer) == BUDGET
    assert escrow.reconcile(hub.ctx) == 0  # settled once: running it again pays nothing
    assert log_of(hub).escrow(job_id).released == net(4 * PER_S)


def test_escrow_is_locked_only_by_submitting_a_job(hub: Hub) -> None:
    consumer = hub.actor()
    log_of(hub).mint(consumer.id, BUDGET)
    body = consumer.call(
        "POST", "/v1/ledger/entries", {"entries": [_lock(consumer, hub)]}, expect=422
    )
    assert body["field"] == "entries.0.entry.kind"
    assert balance(hub, consumer) == BUDGET


def test_a_node_cannot_unstake_while_it_holds_a_lease(hub: Hub) -> None:
    node = hub.node("n1", price_cpu=PRICE)
    log_of(hub).mint(node.id, 1_000)

    def append(kind: type[Any], amount: int, expect: int) -> Any:
        seq = log_of(hub).account(node.id)[2] + 1
        draft = functools.partial(kind, author=node.id, seq=seq, at=1, amount=amount)
        leaf = base64.b64encode(leaf_bytes(sign_entry(draft(), node.identity))).decode()
        return node.call("POST", "/v1/ledger/entries", {"entries": [leaf]}, expect=expect)

    append(Stake, 600, 200)
    assert log_of(hub).account(node.id)[:2] == (400, 600)
    consumer = hub.actor()
    consumer.submit(job_spec())
    task = claim(node)
    assert task is not None
    refused = append(Unstake, 600, 409)
    assert refused["field"] == "entries.0.entry.kind"
    assert "lease" in refused["message"]
    complete(node, task, 1.0)
    append(Unstake, 600, 200)
    assert log_of(hub).account(node.id)[1] == 0


def test_settling_one_job_from_many_threads_at_once_pays_once(hub: Hub) -> None:
    node = hub.node("n1", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(job_spec())["job"]["id"]
    task = claim(node)
    assert task is not None
    work = hub.ctx.store.get_work(task["task_id"], task["attempt"])
    work.kept_s = 3.0
    hub.ctx.store.apply(Changes(work=[work]))  # kept, not yet paid
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: escrow.settle(hub.ctx, job_id), range(16)))
    assert balance(hub, node) == net(3 * PER_S)
    state = log_of(hub).escrow(job_id)
    assert state.released + state.fees == 3 * PER_S
