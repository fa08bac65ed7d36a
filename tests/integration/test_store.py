"""Store behaviour, run against the memory store, SQLite and PostgreSQL (``store`` fixture)."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from lumbung.errors import Conflict, NotFound, StaleWrite
from lumbung.ids import new_id
from lumbung.market.model import (
    CheckpointLink,
    Job,
    JobState,
    LogRecord,
    Node,
    Round,
    RoundState,
    RoundUpdate,
    Task,
    TaskState,
    Work,
)
from lumbung.store import tables
from lumbung.store.protocol import Changes, Store
from lumbung.store.sql import MIGRATIONS_DIR, SqlStore
from lumbung.store.tables import metadata
from lumbung.wire.api import GpuInfo, Inventory
from lumbung.wire.spec import JobSpec

OWNER = "ak_" + "a" * 32
NODE = "ak_" + "n" * 32
T0 = 1_700_000_000.0


def make_job(owner: str = OWNER, created_at: float = T0) -> Job:
    spec = JobSpec(
        name="sweep",
        command=["python", "train.py", "--lr", "{lr}"],
        max_price_micro_per_hour=2_500_000,
        grid={"lr": [0.1, 0.01], "flag": [True], "label": ["a"], "n": [3]},
        env={"SEED": "1"},
        outputs=["model.pt"],
    )
    return Job(
        id=new_id("job"),
        owner=owner,
        name="sweep",
        spec=spec,
        state=JobState.QUEUED,
        created_at=created_at,
        updated_at=created_at,
    )


def make_task(job: Job, index: int = 0, queued_at: float = T0, replica: int = 0) -> Task:
    return Task(
        id=new_id("task"),
        job_id=job.id,
        index=index,
        params={"lr": 0.1, "flag": True, "label": "a", "n": 3},
        state=TaskState.QUEUED,
        queued_at=queued_at,
        updated_at=queued_at,
        replica=replica,
    )


def make_node(node_id: str = NODE) -> Node:
    inventory = Inventory(
        gpus=[GpuInfo(model="RTX 4090", memory_mib=24_564, driver="550.1")],
        cpus=16,
        memory_mib=65_536,
        disk_free_mib=500_000,
        os="linux",
    )
    return Node(
        id=node_id,
        name="home-rig",
        inventory=inventory,
        price_micro_per_gpu_hour=400_000,
        price_micro_per_cpu_hour=10_000,
        slots=2,
        free_slots=2,
        draining=False,
        registered_at=T0,
        last_heartbeat_at=None,
    )


def lease(task: Task, node_id: str = NODE, expires_at: float = T0 + 60) -> Task:
    task.state = TaskState.RUNNING
    task.node_id = node_id
    task.attempt += 1
    task.started_at = T0
    task.lease_expires_at = expires_at
    return task


def link(task: Task, seq: int, sha: str = "c" * 64) -> CheckpointLink:
    return CheckpointLink(
        task_id=task.id,
        seq=seq,
        sha256=sha,
        prev_sha256=None if seq == 0 else "b" * 64,
        node_id=NODE,
        attempt=1,
        progress=0.25,
        runtime_s=30.5,
        kept_s=30.5,
        created_at=T0 + 31,
    )


def stored_job_with_tasks(store: Store, count: int = 1) -> tuple[Job, list[Task]]:
    job = make_job()
    tasks = [make_task(job, i) for i in range(count)]
    store.create_job(job, tasks)
    return job, tasks


# --- jobs and tasks -----------------------------------------------------------------------------


def test_job_and_tasks_round_trip_every_field(store: Store) -> None:
    job = make_job()
    job.error, job.waiting_reason, job.state = "boom", "no node fits", JobState.RUNNING
    task = make_task(job)
    full = dataclasses.replace(
        lease(make_task(job, 1)),
        failures=1,
        progress=0.5,
        exit_code=3,
        outputs={"model.pt": "d" * 64},
        error="killed",
        last_checkpoint_sha="e" * 64,
        log_bytes=12_345,
    )
    store.create_job(job, [task, full])
    assert store.get_job(job.id) == job
    assert store.get_task(full.id) == full
    assert store.list_tasks(job.id) == [task, full]
    assert store.list_jobs(OWNER) == [job]


def test_missing_objects_raise_not_found_naming_the_id(store: Store) -> None:
    for call, missing in [
        (store.get_job, "job_missing"),
        (store.get_task, "task_missing"),
        (store.get_node, "ak_missing"),
    ]:
        with pytest.raises(NotFound, match=missing):
            call(missing)
    with pytest.raises(NotFound, match="ak_missing"):
        store.record_heartbeat("ak_missing", T0, 1, False)
    with pytest.raises(NotFound, match="job_missing"):
        store.append_log(LogRecord(0, "job_missing", "task_x", 1, "stdout", "hi", T0))


def test_list_jobs_returns_only_the_owners_newest_first(store: Store) -> None:
    old, new = make_job(created_at=T0), make_job(created_at=T0 + 5)
    other = make_job(owner="ak_" + "o" * 32)
    for job in (old, new, other):
        store.create_job(job, [])
    assert [j.id for j in store.list_jobs(OWNER)] == [new.id, old.id]


def test_an_owners_task_counts_are_per_job_and_state(store: Store) -> None:
    job, tasks = stored_job_with_tasks(store, count=3)
    empty = make_job()
    store.create_job(empty, [])
    other = make_job(owner="ak_" + "o" * 32)
    store.create_job(other, [make_task(other)])
    tasks[0].state = TaskState.RUNNING
    store.apply(Changes(tasks=[tasks[0]]))
    assert store.owner_task_counts(OWNER) == {job.id: {TaskState.QUEUED: 2, TaskState.RUNNING: 1}}


def test_create_job_with_a_taken_id_conflicts(store: Store) -> None:
    job, _ = stored_job_with_tasks(store)
    with pytest.raises(Conflict):
        store.create_job(job, [make_task(job, 7)])
    assert len(store.list_tasks(job.id)) == 1


def test_returned_records_are_copies_not_stored_state(store: Store) -> None:
    _, [task] = stored_job_with_tasks(store)
    fetched = store.get_task(task.id)
    fetched.params["lr"] = 99.0
    fetched.state = TaskState.FAILED
    assert store.get_task(task.id) == task


# --- apply: optimistic concurrency, all or nothing ----------------------------------------------


def test_apply_bumps_versions_on_stored_and_passed_objects(store: Store) -> None:
    job, [task] = stored_job_with_tasks(store)
    job.state = JobState.RUNNING
    lease(task)
    store.apply(Changes(jobs=[job], tasks=[task]))
    assert (job.version, task.version) == (1, 1)
    assert store.get_job(job.id) == job
    assert store.get_task(task.id) == task


def test_stale_job_fails_the_batch_and_leaves_the_fresh_task_unchanged(store: Store) -> None:
    job, [task] = stored_job_with_tasks(store)
    store.apply(Changes(jobs=[store.get_job(job.id)]))  # someone else writes the job first
    lease(task)
    job.state = JobState.RUNNING
    with pytest.raises(StaleWrite, match=f"job {job.id} changed concurrently"):
        store.apply(Changes(tasks=[task], jobs=[job], checkpoints=[link(task, 0)]))
    assert store.get_task(task.id).state == TaskState.QUEUED
    assert store.get_task(task.id).version == 0
    assert store.list_checkpoints(task.id) == []
    assert (task.version, job.version) == (0, 0)


def test_stale_task_fails_the_batch_and_rolls_back_the_fresh_job(store: Store) -> None:
    job, [task] = stored_job_with_tasks(store)
    store.apply(Changes(tasks=[store.get_task(task.id)]))  # someone else writes the task first
    job.state, job.waiting_reason = JobState.RUNNING, None
    with pytest.raises(StaleWrite, match=f"task {task.id} changed concurrently"):
        store.apply(Changes(jobs=[job], tasks=[lease(task)]))
    assert store.get_job(job.id).state == JobState.QUEUED
    assert store.get_job(job.id).version == 0


def test_one_stale_task_among_many_fails_the_whole_batch(store: Store) -> None:
    _, tasks = stored_job_with_tasks(store, count=40)
    store.apply(Changes(tasks=[store.get_task(tasks[25].id)]))
    for task in tasks:
        task.state = TaskState.CANCELLED
    with pytest.raises(StaleWrite, match="changed concurrently"):
        store.apply(Changes(tasks=tasks))
    assert all(store.get_task(t.id).state == TaskState.QUEUED for t in tasks)


def test_many_fresh_tasks_are_updated_together(store: Store) -> None:
    job, tasks = stored_job_with_tasks(store, count=40)
    for task in tasks:
        task.state = TaskState.CANCELLED
    store.apply(Changes(tasks=tasks))
    assert {(t.state, t.version) for t in store.list_tasks(job.id)} == {(TaskState.CANCELLED, 1)}


def test_apply_to_an_unknown_task_raises_not_found(store: Store) -> None:
    ghost = make_task(make_job())
    with pytest.raises(NotFound, match=ghost.id):
        store.apply(Changes(tasks=[ghost]))


def test_taken_checkpoint_seq_conflicts_and_rolls_back_the_batch(store: Store) -> None:
    _, [task] = stored_job_with_tasks(store)
    store.apply(Changes(checkpoints=[link(task, 0)]))
    task.progress = 0.9
    with pytest.raises(Conflict, match="checkpoint"):
        store.apply(Changes(tasks=[task], checkpoints=[link(task, 0, sha="f" * 64)]))
    assert store.get_task(task.id).progress == 0.0
    assert store.list_checkpoints(task.id) == [link(task, 0)]


def test_checkpoints_are_listed_by_seq(store: Store) -> None:
    _, [task] = stored_job_with_tasks(store)
    store.apply(Changes(checkpoints=[link(task, 2), link(task, 0)]))
    store.apply(Changes(checkpoints=[link(task, 1)]))
    assert [c.seq for c in store.list_checkpoints(task.id)] == [0, 1, 2]


def test_a_jobs_checkpoints_are_read_at_once_by_task_then_seq(store: Store) -> None:
    job, tasks = stored_job_with_tasks(store, count=3)
    _, [other] = stored_job_with_tasks(store)
    first, _, last = sorted(tasks, key=lambda x: x.id)
    store.apply(Changes(checkpoints=[link(last, 1), link(first, 1), link(last, 0), link(other, 0)]))
    assert [(c.task_id, c.seq) for c in store.list_job_checkpoints(job.id)] == [
        (first.id, 1),
        (last.id, 0),
        (last.id, 1),
    ]


def test_work_is_upserted_by_task_and_attempt(store: Store) -> None:
    job, [task] = stored_job_with_tasks(store)
    first = Work(job.id, task.id, 1, NODE, 400_000, kept_s=10.0)
    store.apply(Changes(work=[first, Work(job.id, task.id, 2, NODE, 500_000)]))
    store.apply(Changes(work=[dataclasses.replace(first, kept_s=25.0, lost_s=4.5)]))
    assert store.list_work(job.id) == [
        Work(job.id, task.id, 1, NODE, 400_000, kept_s=25.0, lost_s=4.5),
        Work(job.id, task.id, 2, NODE, 500_000),
    ]


def test_racing_updates_of_one_task_version_let_exactly_one_win(store: Store) -> None:
    _, [task] = stored_job_with_tasks(store)
    racers = 4
    barrier = threading.Barrier(racers)

    def claim(node_number: int) -> str:
        mine = lease(store.get_task(task.id), node_id=f"ak_{node_number}")
        barrier.wait()
        try:
            store.apply(Changes(tasks=[mine]))
        except Conflict:
            return "lost"
        return "won"

    with ThreadPoolExecutor(racers) as pool:
        outcomes = list(pool.map(claim, range(racers)))
    assert sorted(outcomes) == ["lost"] * (racers - 1) + ["won"]
    assert store.get_task(task.id).version == 1


# --- replicas: copies of one logical task ------------------------------------------------------


def test_new_tasks_are_stored_and_listed_as_replicas_in_order(store: Store) -> None:
    job, [first, other] = stored_job_with_tasks(store, count=2)
    second = make_task(job, 0, queued_at=T0 + 5, replica=2)
    second.verdict = "unverified"
    third = make_task(job, 0, queued_at=T0 + 5, replica=1)
    store.apply(Changes(new_tasks=[second, third], checkpoints=[link(third, 0)]))
    assert store.list_replicas(job.id, 0) == [first, third, second]
    assert store.get_task(second.id) == second
    assert (second.replica, second.verdict, second.version) == (2, "unverified", 0)
    assert store.list_replicas(job.id, 1) == [other]
    assert store.list_replicas(job.id, 7) == []
    assert [(x.index, x.replica) for x in store.list_tasks(job.id)] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
    ]
    assert store.list_checkpoints(third.id) == [link(third, 0)]  # a link may name a new task


def test_a_taken_replica_conflicts_and_nothing_of_the_batch_is_kept(store: Store) -> None:
    job, [task] = stored_job_with_tasks(store)
    fresh = make_task(job, 0, replica=1)
    taken = make_task(job, 0, replica=0)  # another id, but the copy the stored task already is
    task.verdict = "agreed"
    with pytest.raises(Conflict, match=f"job {job.id} index 0 replica 0"):
        store.apply(Changes(tasks=[task], new_tasks=[fresh, taken]))
    assert store.get_task(task.id).verdict is None
    assert (task.version, store.get_task(task.id).version) == (0, 0)
    assert store.list_replicas(job.id, 0) == [store.get_task(task.id)]
    with pytest.raises(Conflict, match="replica 1"):  # one copy twice in one batch
        store.apply(Changes(new_tasks=[fresh, make_task(job, 0, replica=1)]))
    with pytest.raises(Conflict):  # a task id already stored
        store.apply(Changes(new_tasks=[dataclasses.replace(task, replica=5)]))
    assert [x.id for x in store.list_tasks(job.id)] == [task.id]


def test_a_new_task_of_a_job_never_stored_conflicts(store: Store) -> None:
    ghost = make_task(make_job(), 0, replica=1)
    with pytest.raises(Conflict, match=f"job {ghost.job_id} index 0 replica 1"):
        store.apply(Changes(new_tasks=[ghost]))
    with pytest.raises(NotFound):
        store.get_task(ghost.id)


def test_create_job_refuses_two_tasks_that_are_one_copy(store: Store) -> None:
    job = make_job()
    with pytest.raises(Conflict):
        store.create_job(job, [make_task(job, 0, replica=1), make_task(job, 0, replica=1)])
    with pytest.raises(NotFound):
        store.get_job(job.id)


def test_verdicts_are_written_and_changed_through_apply(store: Store) -> None:
    job, [task] = stored_job_with_tasks(store)
    replica = make_task(job, 0, replica=1)
    store.apply(Changes(new_tasks=[replica]))
    task.verdict, replica.verdict = "agreed", "wrong"
    store.apply(Changes(tasks=[task, replica]))
    assert [(x.verdict, x.version) for x in store.list_replicas(job.id, 0)] == [
        ("agreed", 1),
        ("wrong", 1),
    ]
    replica.verdict = None
    store.apply(Changes(tasks=[replica]))
    assert store.get_task(replica.id) == replica


# --- queues and leases --------------------------------------------------------------------------


def test_queued_tasks_come_oldest_first_up_to_the_limit(store: Store) -> None:
    job = make_job()
    tasks = [make_task(job, i, queued_at=T0 + q) for i, q in enumerate([30, 10, 20, 5])]
    tasks[3].state = TaskState.SUCCEEDED
    store.create_job(job, tasks)
    assert [t.index for t in store.queued_tasks(limit=2)] == [1, 2]
    assert [t.index for t in store.queued_tasks(limit=10)] == [1, 2, 0]


def test_tasks_queued_together_come_in_index_order(store: Store) -> None:
    job = make_job()
    store.create_job(job, [make_task(job, i, queued_at=T0) for i in range(8)])
    assert [t.index for t in store.queued_tasks(limit=10)] == list(range(8))


def test_replicas_queued_together_come_in_index_then_replica_order(store: Store) -> None:
    job = make_job()
    copies = [(i, r) for r in (2, 0, 1) for i in (1, 0)]
    store.create_job(job, [make_task(job, i, queued_at=T0, replica=r) for i, r in copies])
    assert [(t.index, t.replica) for t in store.queued_tasks(limit=10)] == sorted(copies)


def test_running_tasks_can_be_filtered_by_node(store: Store) -> None:
    job = make_job()
    mine, theirs, idle = (make_task(job, i) for i in range(3))
    store.create_job(job, [lease(mine), lease(theirs, node_id="ak_other"), idle])
    assert {t.id for t in store.running_tasks()} == {mine.id, theirs.id}
    assert [t.id for t in store.running_tasks(NODE)] == [mine.id]


def test_expired_leases_are_the_running_tasks_past_their_lease(store: Store) -> None:
    job = make_job()
    late, fresh, queued = (make_task(job, i) for i in range(3))
    queued.lease_expires_at = T0  # a leftover lease time on a queued task is not a lease
    store.create_job(
        job, [lease(late, expires_at=T0 + 10), lease(fresh, expires_at=T0 + 99), queued]
    )
    assert [t.id for t in store.expired_leases(now=T0 + 50)] == [late.id]
    assert store.expired_leases(now=T0 + 10) == []


# --- actors, nonces, nodes, heartbeats ----------------------------------------------------------


def test_reused_nonce_conflicts_until_purged(store: Store) -> None:
    store.ensure_actor(OWNER, b"k" * 32, T0)
    store.ensure_actor(OWNER, b"other key", T0 + 1)  # a known actor keeps its key, no error
    store.use_nonce(OWNER, "n1", expires_at=T0 + 300)
    store.use_nonce("ak_" + "o" * 32, "n1", expires_at=T0 + 300)  # nonces are per actor
    store.use_nonce(OWNER, "n2", expires_at=T0 + 900)
    with pytest.raises(Conflict, match="replayed"):
        store.use_nonce(OWNER, "n1", expires_at=T0 + 300)
    assert store.purge_nonces(now=T0 + 600) == 2
    store.use_nonce(OWNER, "n1", expires_at=T0 + 1200)
    with pytest.raises(Conflict):
        store.use_nonce(OWNER, "n2", expires_at=T0 + 1200)


def test_put_node_inserts_then_replaces_and_bumps_version(store: Store) -> None:
    node = make_node()
    store.put_node(node)
    assert store.get_node(NODE) == node
    node.slots, node.price_micro_per_gpu_hour = 4, 350_000
    store.put_node(node)
    assert node.version == 1
    assert store.get_node(NODE) == node
    assert store.list_nodes() == [node]


def test_heartbeats_update_the_node_and_count_distinct_minutes(store: Store) -> None:
    store.put_node(make_node())
    minute = 60 * 28_333_000
    for at in [minute + 1, minute + 5, minute + 61, minute + 200]:
        store.record_heartbeat(NODE, float(at), free_slots=1, draining=True)
    node = store.get_node(NODE)
    assert (node.last_heartbeat_at, node.free_slots, node.draining) == (minute + 200, 1, True)
    assert store.heartbeat_minutes(since=0.0, node_id=NODE) == {NODE: 3}
    assert store.heartbeat_minutes(since=minute + 60.0) == {NODE: 2}
    assert store.heartbeat_minutes(since=0.0, node_id="ak_silent") == {}


# --- nodes' streaks of valid results ------------------------------------------------------------

GPU_RUN, CPU_RUN = "run:gpu", "run:cpu"
OTHER_NODE = "ak_" + "o" * 32


def test_a_pair_never_recorded_has_a_streak_of_zero(store: Store) -> None:
    store.record_results([(NODE, CPU_RUN, True)], T0)
    assert store.valid_streak(NODE, GPU_RUN) == 0
    assert store.valid_streak(OTHER_NODE, CPU_RUN) == 0
    assert store.node_streaks(OTHER_NODE) == {}


def test_valid_results_count_up_and_an_invalid_one_resets_the_streak(store: Store) -> None:
    for i in range(3):
        store.record_results([(NODE, GPU_RUN, True)], T0 + i)
    assert store.valid_streak(NODE, GPU_RUN) == 3
    store.record_results([(NODE, GPU_RUN, False)], T0 + 3)
    assert store.valid_streak(NODE, GPU_RUN) == 0
    store.record_results([(NODE, GPU_RUN, True)], T0 + 4)
    assert store.valid_streak(NODE, GPU_RUN) == 1
    store.record_results([(OTHER_NODE, GPU_RUN, False)], T0 + 5)  # a first result, invalid
    assert store.node_streaks(OTHER_NODE) == {GPU_RUN: 0}


def test_results_for_one_pair_in_one_call_apply_in_order(store: Store) -> None:
    store.record_results([(NODE, GPU_RUN, True)] * 5, T0)
    assert store.valid_streak(NODE, GPU_RUN) == 5
    store.record_results([(NODE, GPU_RUN, True), (NODE, GPU_RUN, False)], T0 + 1)
    assert store.valid_streak(NODE, GPU_RUN) == 0
    store.record_results([(NODE, GPU_RUN, True)] * 4, T0 + 2)
    store.record_results(
        [(NODE, GPU_RUN, False), (NODE, CPU_RUN, True), (NODE, GPU_RUN, True)] * 2, T0 + 3
    )
    assert store.node_streaks(NODE) == {GPU_RUN: 1, CPU_RUN: 2}
    store.record_results([], T0 + 4)
    assert store.node_streaks(NODE) == {GPU_RUN: 1, CPU_RUN: 2}


def test_node_streaks_lists_every_workload_of_one_node_only(store: Store) -> None:
    store.record_results([(NODE, GPU_RUN, True), (NODE, CPU_RUN, True), (NODE, CPU_RUN, True)], T0)
    store.record_results([(OTHER_NODE, "train:gpu", True), (OTHER_NODE, GPU_RUN, False)], T0)
    assert store.node_streaks(NODE) == {GPU_RUN: 1, CPU_RUN: 2}
    assert store.node_streaks(OTHER_NODE) == {"train:gpu": 1, GPU_RUN: 0}


def test_concurrent_valid_results_are_each_counted(store: Store) -> None:
    threads, calls = 8, 25
    barrier = threading.Barrier(threads)

    def record(thread: int) -> None:
        # Half the threads name the two pairs the other way round: on PostgreSQL, rows locked in
        # the order given would deadlock.
        pairs = [(NODE, GPU_RUN, True), (OTHER_NODE, GPU_RUN, True)]
        barrier.wait()
        for _ in range(calls):
            store.record_results(pairs if thread % 2 else pairs[::-1], T0)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(record, range(threads)))
    assert store.valid_streak(NODE, GPU_RUN) == threads * calls
    assert store.valid_streak(OTHER_NODE, GPU_RUN) == threads * calls


# --- logs ---------------------------------------------------------------------------------------


def test_logs_get_increasing_seqs_and_are_paged_after_a_seq(store: Store) -> None:
    job, [task] = stored_job_with_tasks(store)
    other, _ = stored_job_with_tasks(store)
    seqs = []
    for i in range(5):
        seqs.append(store.append_log(LogRecord(0, job.id, task.id, 1, "stdout", f"l{i}", T0 + i)))
        store.append_log(LogRecord(0, other.id, "task_x", 1, "stderr", "noise", T0))
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    page = store.list_logs(job.id, after_seq=seqs[1], limit=2)
    assert [r.text for r in page] == ["l2", "l3"]
    assert [r.seq for r in page] == seqs[2:4]
    assert page[0] == LogRecord(seqs[2], job.id, task.id, 1, "stdout", "l2", T0 + 2)
    assert store.list_logs(job.id, after_seq=seqs[-1], limit=10) == []


def test_tail_logs_gives_the_last_chunks_of_one_attempt_in_order(store: Store) -> None:
    job, [task] = stored_job_with_tasks(store)
    for attempt, text in [(1, "a1"), (2, "b1"), (1, "a2"), (2, "b2"), (2, "b3")]:
        store.append_log(LogRecord(0, job.id, task.id, attempt, "stderr", text, T0))
    assert [r.text for r in store.tail_logs(task.id, attempt=2, limit=2)] == ["b2", "b3"]
    assert [r.text for r in store.tail_logs(task.id, attempt=1, limit=10)] == ["a1", "a2"]
    assert store.tail_logs(task.id, attempt=3, limit=10) == []


# --- the SQL store only: schema and migrations --------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_migrated_schema_matches_the_tables(sql_url: str) -> None:
    store = SqlStore.open(sql_url)
    try:
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        store.close()


def test_hubs_starting_at_once_migrate_exactly_once(sql_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: SqlStore.open(sql_url), range(4)))
    try:
        with stores[0].engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert versions == [("0008",)]
        stores[0].put_node(make_node())
        assert stores[3].get_node(NODE) == make_node()
    finally:
        for opened in stores:
            opened.close()


def _migrate_to(engine: sa.Engine, revision: str, *, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


def test_migration_0007_makes_existing_tasks_first_replicas_and_downgrades(sql_url: str) -> None:
    engine = sa.create_engine(sql_url)
    try:
        _migrate_to(engine, "0006")
        job = make_job()
        tasks = [make_task(job, i) for i in range(2)]
        with engine.begin() as conn:
            conn.execute(sa.insert(tables.jobs), tables.job_row(job))
            for task in tasks:  # a row as a hub before 0007 wrote it
                row = tables.task_row(task)
                del row["replica"], row["verdict"], row["execution_class"]
                conn.execute(sa.insert(tables.tasks), row)
        _migrate_to(engine, "0007")
        store = SqlStore(engine)
        assert store.list_replicas(job.id, 1) == [tasks[1]]
        assert [(x.replica, x.verdict) for x in store.list_tasks(job.id)] == [(0, None)] * 2
        store.apply(Changes(new_tasks=[make_task(job, 1, replica=1)]))
        store.apply(Changes(checkpoints=[link(tasks[0], 0)]))  # the downgrade keeps child rows
        _migrate_to(engine, "0006", down=True)
        inspector = sa.inspect(engine)
        assert {"replica", "verdict", "execution_class"}.isdisjoint(
            c["name"] for c in inspector.get_columns("tasks")
        )
        assert "ux_tasks_job_id_index_replica" not in {
            i["name"] for i in inspector.get_indexes("tasks")
        }
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(tables.tasks)).scalar() == 3
    finally:
        engine.dispose()


def test_hubs_sharing_a_database_count_every_valid_result(sql_url: str) -> None:
    hubs = [SqlStore.open(sql_url) for _ in range(2)]
    threads, calls = 8, 25
    barrier = threading.Barrier(threads)

    def record(thread: int) -> None:
        barrier.wait()
        for _ in range(calls):
            hubs[thread % 2].record_results([(NODE, GPU_RUN, True)], T0)

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(record, range(threads)))
        assert [hub.valid_streak(NODE, GPU_RUN) for hub in hubs] == [threads * calls] * 2
    finally:
        for hub in hubs:
            hub.close()


def test_migration_0008_adds_an_empty_streak_table_and_downgrades(sql_url: str) -> None:
    engine = sa.create_engine(sql_url)
    try:
        _migrate_to(engine, "0007")
        assert "node_streaks" not in sa.inspect(engine).get_table_names()
        _migrate_to(engine, "0008")
        with engine.connect() as conn:
            count = sa.select(sa.func.count()).select_from(tables.node_streaks)
            assert conn.execute(count).scalar() == 0
        store = SqlStore(engine)
        store.record_results([(NODE, GPU_RUN, True)], T0)
        assert store.node_streaks(NODE) == {GPU_RUN: 1}
        _migrate_to(engine, "0007", down=True)
        assert "node_streaks" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_task_state_counts_can_leave_some_tasks_out(store: Store) -> None:
    job = make_job()
    tasks = [make_task(job, i) for i in range(4)]
    tasks[0].state = TaskState.SUCCEEDED
    store.create_job(job, [tasks[0], lease(tasks[1]), tasks[2], tasks[3]])
    assert store.task_state_counts(job.id) == {
        TaskState.SUCCEEDED: 1,
        TaskState.RUNNING: 1,
        TaskState.QUEUED: 2,
    }
    assert store.task_state_counts(job.id, excluding=[tasks[2].id, tasks[1].id]) == {
        TaskState.SUCCEEDED: 1,
        TaskState.QUEUED: 1,
    }
    assert store.task_state_counts("job_nonexistent0000") == {}


def test_queued_tasks_read_a_page_at_an_offset(store: Store) -> None:
    job = make_job()
    store.create_job(job, [make_task(job, i, queued_at=T0) for i in range(5)])
    assert [t.index for t in store.queued_tasks(limit=2, offset=2)] == [2, 3]
    assert [t.index for t in store.queued_tasks(limit=2, offset=4)] == [4]


def test_work_record_of_one_attempt_is_read_directly(store: Store) -> None:
    job = make_job()
    task = make_task(job)
    store.create_job(job, [task])
    store.apply(Changes(work=[Work(job.id, task.id, 1, NODE, 400_000, kept_s=3.0)]))
    assert store.get_work(task.id, 1).kept_s == 3.0
    with pytest.raises(NotFound, match="attempt 2"):
        store.get_work(task.id, 2)


# --- training rounds ----------------------------------------------------------------------------


def _round(job: Job, index: int, deadline_at: float = T0 + 600) -> Round:
    return Round(
        job_id=job.id, index=index, state=RoundState.OPEN, opened_at=T0, deadline_at=deadline_at
    )


def _update(task: Task, round_index: int, at: float) -> RoundUpdate:
    return RoundUpdate(
        job_id=task.job_id,
        round_index=round_index,
        task_id=task.id,
        node_id=NODE,
        attempt=1,
        sha256="ab" * 32,
        size_bytes=1234,
        tokens=4096,
        inner_steps=50,
        train_loss=2.5,
        base_val_loss=None if round_index == 0 else 2.7,
        bytes_down=5678,
        device="cuda",
        created_at=at,
    )


def test_rounds_open_close_and_refuse_stale_writes(store: Store) -> None:
    job = make_job()
    store.create_job(job, [make_task(job)])
    with pytest.raises(NotFound):
        store.latest_round(job.id)
    first = _round(job, 0)
    store.apply(Changes(new_rounds=[first]))
    with pytest.raises(Conflict):
        store.apply(Changes(new_rounds=[_round(job, 0)]))
    stale = store.get_round(job.id, 0)
    first.state, first.closed_at = RoundState.CLOSED, T0 + 30
    first.participants, first.metrics = 3, {"train_loss": 2.5, "bytes_up": 3702.0}
    first.base_sha = "cd" * 32
    store.apply(Changes(rounds=[first], new_rounds=[_round(job, 1)]))
    assert first.version == 1
    assert store.get_round(job.id, 0) == first
    with pytest.raises(StaleWrite):
        store.apply(Changes(rounds=[stale]))
    with pytest.raises(StaleWrite):  # a second closer of round 0: stale, not a taken round 1
        store.apply(Changes(rounds=[stale], new_rounds=[_round(job, 1)]))
    assert [r.index for r in store.list_rounds(job.id)] == [0, 1]
    assert store.latest_round(job.id).index == 1
    with pytest.raises(Conflict):
        store.apply(Changes(new_rounds=[_round(make_job(), 0)]))  # a job never stored


def test_rounds_due_are_the_open_ones_past_their_deadline(store: Store) -> None:
    job = make_job()
    store.create_job(job, [make_task(job)])
    closed = _round(job, 0, deadline_at=T0 + 10)
    closed.state = RoundState.CLOSED
    store.apply(Changes(new_rounds=[closed, _round(job, 1, deadline_at=T0 + 20)]))
    assert store.rounds_due(T0 + 15) == []
    assert [r.index for r in store.rounds_due(T0 + 20)] == [1]


def test_a_task_sends_one_update_per_round(store: Store) -> None:
    job = make_job()
    tasks = [make_task(job, i) for i in range(2)]
    store.create_job(job, tasks)
    store.apply(Changes(new_rounds=[_round(job, 0)]))
    second, first = _update(tasks[1], 0, T0 + 2), _update(tasks[0], 0, T0 + 3)
    store.apply(Changes(updates=[second]))
    store.apply(Changes(updates=[first]))
    assert store.list_updates(job.id, 0) == [second, first]
    with pytest.raises(Conflict):
        store.apply(Changes(updates=[_update(tasks[1], 0, T0 + 4)]))
    assert store.list_updates(job.id, 1) == []
    assert store.list_updates(job.id) == [second, first]  # every round of the job
