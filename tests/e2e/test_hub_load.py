"""The hub under concurrent load, as a real process: claims racing for the same tasks, and
heartbeats that keep every lease while a big training round closes.

The nodes here are simulated (``NodeSession`` clients with their own keys that claim, heartbeat
and report but run nothing), so the load is on the hub alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pytest

from conftest import LEASE_TIMEOUT_S, Cluster
from lumbung.client.node_session import NodeSession
from lumbung.config import HubConfig
from lumbung.crypto.keys import Identity
from lumbung.train.codec import CodecConfig, encode
from lumbung.train.rounds import FULL_WEIGHTS
from lumbung.wire.api import (
    Assignment,
    HeartbeatRequest,
    Inventory,
    NodeRegister,
    RoundUpdateReport,
    TaskReport,
)
from lumbung.wire.spec import JobSpec
from lumbung.wire.train import TrainSpec

T = TypeVar("T")

CLAIMERS = 20
RACED_TASKS = 30
HEARTBEATERS = 200
HEARTBEAT_S = 1.0
TRAINERS = 4
# Parameters of the model whose round closes: big enough that closing takes seconds (decoding
# four int8 updates, the outer step, publishing 128 MB of weights), longer than a lease.
BIG_NUMEL = 32_000_000


def _node(
    hub_url: str, name: str, *, slots: int = 1, kinds: tuple[str, ...] = ("run",)
) -> NodeSession:
    session = NodeSession(hub_url, Identity.generate(), timeout_s=60.0)
    session.register(
        NodeRegister(
            name=name,
            inventory=Inventory(cpus=4, memory_mib=8192, disk_free_mib=50_000, kinds=list(kinds)),
            price_micro_per_gpu_hour=0,
            price_micro_per_cpu_hour=3_600_000,
            slots=slots,
        )
    )
    return session


def _all(count: int, make: Callable[[int], T], threads: int = 16) -> list[T]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(make, range(count)))


def _noop_job(cluster: Cluster, name: str, count: int) -> str:
    spec = JobSpec(
        name=name,
        command=["true"],
        count=count,
        max_price_micro_per_hour=3_600_000,
        max_runtime_s=60,
        retries=0,
    )
    job_id = cluster.client.submit(spec).job.id
    _past_first_refusal()
    return job_id


def _past_first_refusal() -> None:
    # The nodes are equal, so for the grace the one of smallest id has first refusal of every
    # task (lumbung.market.matching.choose_task); after it, any node may take any.
    time.sleep(HubConfig.cheaper_node_grace_s + 0.5)


def test_twenty_nodes_claiming_at_once_lease_each_task_exactly_once(cluster: Cluster) -> None:
    nodes = _all(CLAIMERS, lambda i: _node(cluster.url, f"claimer-{i}", slots=2))
    job_id = _noop_job(cluster, "race", RACED_TASKS)
    start = threading.Barrier(CLAIMERS)

    def race(node: NodeSession) -> list[str]:
        start.wait()
        leased: list[str] = []
        while len(leased) < 2:  # each node has two slots
            assignment = node.claim(0)
            if assignment is None:
                break
            leased.append(assignment.task_id)
        return leased

    with ThreadPoolExecutor(CLAIMERS) as pool:
        leased = dict(zip(nodes, pool.map(race, nodes), strict=True))
    held = [task for tasks in leased.values() for task in tasks]
    assert len(held) == len(set(held)) == RACED_TASKS  # none twice, none left behind
    holder = {task: node.node_id for node, tasks in leased.items() for task in tasks}
    view = cluster.client.get(job_id)
    assert {(t.id, t.state, t.attempt, t.node_id) for t in view.tasks} == {
        (task, "running", 1, node_id) for task, node_id in holder.items()
    }
    for node in nodes:
        node.close()


class _Workers:
    """Nodes that each claim a task and then heartbeat it every ``HEARTBEAT_S``, from a few
    threads, recording any task the hub did not renew and the slowest answer.

    A thread claims its nodes one at a time and beats each claimed one when it falls due, so a
    lease is renewed from its first seconds on, as a real node's is.
    """

    def __init__(self, nodes: list[NodeSession], threads: int = 25) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.held: dict[NodeSession, Assignment] = {}
        self._count = len(nodes)
        self.all_claimed = threading.Event()
        self.lost: list[str] = []
        self.slowest_s = 0.0
        self._threads = [
            threading.Thread(target=self._run, args=(nodes[i::threads],), daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> _Workers:
        for thread in self._threads:
            thread.start()
        assert self.all_claimed.wait(timeout=120), "the nodes did not all claim in time"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, mine: list[NodeSession]) -> None:
        unclaimed = list(mine)
        due: dict[NodeSession, float] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            late = [node for node, at in due.items() if at <= now]
            for node in sorted(late, key=due.__getitem__):
                self._beat(node, self.held[node])
                due[node] = time.monotonic() + HEARTBEAT_S
            if unclaimed:
                node = unclaimed.pop()
                self._claim(node)
                due[node] = time.monotonic() + HEARTBEAT_S
            elif due:
                self._stop.wait(max(0.0, min(due.values()) - time.monotonic()))

    def _claim(self, node: NodeSession) -> None:
        assignment = node.claim(0)
        assert assignment is not None, f"{node.node_id} found no work"
        with self._lock:
            self.held[node] = assignment
            if len(self.held) == self._count:
                self.all_claimed.set()

    def _beat(self, node: NodeSession, task: Assignment) -> None:
        report = TaskReport(task_id=task.task_id, attempt=task.attempt)
        sent = time.monotonic()
        answer = node.heartbeat(HeartbeatRequest(tasks=[report]))
        took = time.monotonic() - sent
        with self._lock:
            self.slowest_s = max(self.slowest_s, took)
            if task.task_id not in answer.renewed:
                self.lost.append(task.task_id)


@pytest.mark.parametrize("db_url", [""], ids=["sqlite"])
@pytest.mark.xdist_group("training")  # the round close saturates a core: not beside training
def test_a_round_that_takes_seconds_to_close_costs_no_heartbeating_node_its_lease(
    cluster: Cluster,
) -> None:
    nodes = _all(HEARTBEATERS, lambda i: _node(cluster.url, f"worker-{i}"))
    trainers = _all(TRAINERS, lambda i: _node(cluster.url, f"trainer-{i}", kinds=("train",)))
    initial_bytes = encode(np.zeros(BIG_NUMEL, dtype=np.float32), FULL_WEIGHTS)
    initial = trainers[0].upload_bytes(initial_bytes)
    del initial_bytes
    # Distinct updates, as honest workers send: screening would leave copies out.
    rng = np.random.default_rng(0)
    updates = []
    for trainer in trainers:
        delta = rng.normal(scale=0.01, size=BIG_NUMEL).astype(np.float32)
        updates.append(trainer.upload_bytes(encode(delta, CodecConfig("int8", 256))))
        del delta

    run_job = _noop_job(cluster, "held", HEARTBEATERS)
    train = TrainSpec.model_validate(
        {"rounds": 2, "workers": {"wanted": TRAINERS, "minimum": TRAINERS}}
    )
    spec = JobSpec(
        name="big", kind="train", train=train, max_price_micro_per_hour=3_600_000,
        max_runtime_s=600,
    )  # fmt: skip
    train_job = cluster.client.submit(spec).job.id
    _past_first_refusal()

    with _Workers(nodes + trainers) as workers:
        time.sleep(2 * HEARTBEAT_S)  # every lease renewed at least once under this load
        tasks = [workers.held[t] for t in trainers]

        def send(i: int) -> None:
            report = RoundUpdateReport(
                attempt=tasks[i].attempt, sha256=updates[i], base_sha=initial,
                initial_sha=initial if i == 0 else None, tokens=1, inner_steps=1,
                train_loss=2.0, bytes_down=0, runtime_s=1.0,
            )  # fmt: skip
            trainers[i].send_update(tasks[i].task_id, 0, report)

        send(0)  # with the seeded initial weights: round 0's base
        _all(TRAINERS - 2, lambda i: send(i + 1))
        asked = time.monotonic()
        send(TRAINERS - 1)  # completes round 0: the hub closes it
        while trainers[0].round_info(tasks[0].task_id, tasks[0].attempt).round == 0:
            time.sleep(0.1)
        closing_s = time.monotonic() - asked
        time.sleep(2 * HEARTBEAT_S)

    # Worth asserting only if the close outlasted a lease: a hub that closed it in the way of
    # heartbeats would then have let leases expire.
    assert closing_s > LEASE_TIMEOUT_S, f"the round closed in {closing_s:.1f} s"
    slowest = f"slowest heartbeat {workers.slowest_s:.2f} s"
    assert workers.lost == [], f"{len(workers.lost)} leases lost; {slowest}"
    assert workers.slowest_s < LEASE_TIMEOUT_S / 2, slowest
    for job_id in (run_job, train_job):
        view = cluster.client.get(job_id)
        assert {(t.state, t.attempt) for t in view.tasks} == {("running", 1)}, job_id
    for node in nodes + trainers:
        node.close()
