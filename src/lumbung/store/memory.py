"""The in-memory store: ``SqlStore``'s twin for tests and simulation, with the same behaviour.

Records are copied on the way in and out, so a caller that mutates an object it holds changes
nothing stored until it calls ``apply`` (exactly as with rows in a database). One lock serialises
every method, which is what a transaction would give; the transparency log's store shares it, so
that an unstake's lease check and its append are one step (``LedgerStore.append``'s ``unleased``).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import threading
from collections.abc import Callable, Sequence, Set
from typing import TypeVar

from lumbung.errors import Conflict, NotFound, StaleWrite
from lumbung.market.model import (
    PENDING_VERDICT,
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
from lumbung.store.ledger import MemoryLedgerStore
from lumbung.store.protocol import Changes

# A memory store has no connection pool; it reports the SQL stores' so that a hub sizes its
# capacity the same on every store (``lumbung.hub.capacity``).
MEMORY_CONNECTIONS = 30


def _copy_node(node: Node) -> Node:
    return dataclasses.replace(node, inventory=node.inventory.model_copy(deep=True))


def _copy_job(job: Job) -> Job:
    # The spec is a frozen pydantic model that nothing mutates: sharing it is safe.
    return dataclasses.replace(job)


def _copy_task(task: Task) -> Task:
    return dataclasses.replace(task, params=dict(task.params), outputs=dict(task.outputs))


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actors: dict[str, bytes] = {}
        self._nonces: dict[tuple[str, str], float] = {}
        self._nodes: dict[str, Node] = {}
        self._minutes: dict[str, set[int]] = {}
        self._streaks: dict[tuple[str, str], int] = {}  # (node, workload) -> valid results in a row
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, Task] = {}
        self._checkpoints: dict[tuple[str, int], CheckpointLink] = {}
        self._work: dict[tuple[str, int], Work] = {}
        self._rounds: dict[tuple[str, int], Round] = {}
        self._updates: dict[tuple[str, int, str], RoundUpdate] = {}  # in arrival order
        self._logs: dict[str, list[LogRecord]] = {}  # by job, in seq order
        self._log_seq = itertools.count(1)
        self._ledger = MemoryLedgerStore(self._lock, self._leases_held)

    @property
    def max_connections(self) -> int:
        return MEMORY_CONNECTIONS

    # --- actors and replay protection -----------------------------------------------------------

    def ensure_actor(self, actor_id: str, public_key: bytes, now: float) -> None:
        with self._lock:
            self._actors.setdefault(actor_id, public_key)

    def use_nonce(self, actor_id: str, nonce: str, expires_at: float) -> None:
        with self._lock:
            if (actor_id, nonce) in self._nonces:
                raise Conflict("replayed signature nonce")
            self._nonces[(actor_id, nonce)] = expires_at

    def purge_nonces(self, now: float) -> int:
        with self._lock:
            old = [key for key, expires_at in self._nonces.items() if expires_at < now]
            for key in old:
                del self._nonces[key]
            return len(old)

    # --- nodes ------------------------------------------------------------------------------------

    def put_node(self, node: Node) -> None:
        with self._lock:
            stored = self._nodes.get(node.id)
            if stored is not None:
                node.version = stored.version + 1
            self._nodes[node.id] = _copy_node(node)

    def get_node(self, node_id: str) -> Node:
        with self._lock:
            return _copy_node(self._node(node_id))

    def list_nodes(self) -> list[Node]:
        with self._lock:
            return [_copy_node(n) for _, n in sorted(self._nodes.items())]

    def record_heartbeat(self, node_id: str, now: float, free_slots: int, draining: bool) -> None:
        with self._lock:
            node = self._node(node_id)
            node.last_heartbeat_at = now
            node.free_slots = free_slots
            node.draining = draining
            node.version += 1
            self._minutes.setdefault(node_id, set()).add(int(now // 60))

    def purge_heartbeat_minutes(self, before: float) -> int:
        first_kept = int(before // 60)
        purged = 0
        with self._lock:
            for minutes in self._minutes.values():
                old = {m for m in minutes if m < first_kept}
                minutes -= old
                purged += len(old)
        return purged

    def heartbeat_minutes(self, since: float, node_id: str | None = None) -> dict[str, int]:
        first = int(since // 60)  # the minute containing ``since`` counts, as in SqlStore
        with self._lock:
            counts = {
                node: sum(1 for m in minutes if m >= first)
                for node, minutes in self._minutes.items()
                if node_id in (None, node)
            }
        return {node: n for node, n in counts.items() if n}

    def _node(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise NotFound(f"no node {node_id}") from None

    # --- nodes' streaks of valid results ---------------------------------------------------------

    def valid_streak(self, node_id: str, workload: str) -> int:
        with self._lock:
            return self._streaks.get((node_id, workload), 0)

    def record_results(self, results: Sequence[tuple[str, str, bool]], now: float) -> None:
        with self._lock:
            for node_id, workload, valid in results:
                key = (node_id, workload)
                self._streaks[key] = self._streaks.get(key, 0) + 1 if valid else 0

    def node_streaks(self, node_id: str) -> dict[str, int]:
        with self._lock:
            return {w: n for (node, w), n in sorted(self._streaks.items()) if node == node_id}

    # --- jobs and tasks -------------------------------------------------------------------------

    def create_job(self, job: Job, tasks: Sequence[Task]) -> None:
        with self._lock:
            ids = [x.id for x in tasks]
            copies = {(x.index, x.replica) for x in tasks}  # the job is new: none stored yet
            taken = job.id in self._jobs or any(i in self._tasks for i in ids)
            if taken or len(set(ids)) != len(ids) or len(copies) != len(ids):
                raise Conflict(f"job {job.id} or one of its tasks already exists")
            self._jobs[job.id] = _copy_job(job)
            for task in tasks:
                self._tasks[task.id] = _copy_task(task)

    def get_job(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise NotFound(f"no job {job_id}")
            return _copy_job(self._jobs[job_id])

    def list_jobs(self, owner: str) -> list[Job]:
        with self._lock:
            mine = [j for j in self._jobs.values() if j.owner == owner]
            mine.sort(key=lambda j: (j.created_at, j.id), reverse=True)
            return [_copy_job(j) for j in mine]

    def fail_job(self, job_id: str, error: str, now: float) -> None:
        # Records are kept as objects, never as rows: a job here always reads back, but the hub
        # also fails jobs whose submission broke after they were stored.
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if job.state not in (JobState.QUEUED, JobState.RUNNING):
                return
            self._jobs[job_id] = dataclasses.replace(
                job,
                state=JobState.FAILED,
                error=error,
                waiting_reason=None,
                updated_at=now,
                version=job.version + 1,
            )
            unfinished = (TaskState.QUEUED, TaskState.RUNNING)
            for task in [x for x in self._tasks.values() if x.job_id == job_id]:
                if task.state in unfinished:
                    self._tasks[task.id] = dataclasses.replace(
                        task,
                        state=TaskState.CANCELLED,
                        lease_expires_at=None,
                        updated_at=now,
                        version=task.version + 1,
                    )

    def get_task(self, task_id: str) -> Task:
        with self._lock:
            if task_id not in self._tasks:
                raise NotFound(f"no task {task_id}")
            return _copy_task(self._tasks[task_id])

    def list_tasks(self, job_id: str) -> list[Task]:
        return self._select_tasks(lambda x: x.job_id == job_id, key=lambda x: (x.index, x.replica))

    def list_replicas(self, job_id: str, index: int) -> list[Task]:
        return self._select_tasks(
            lambda x: x.job_id == job_id and x.index == index, key=lambda x: (x.replica,)
        )

    def task_state_counts(self, job_id: str, excluding: Sequence[str] = ()) -> dict[TaskState, int]:
        skip = set(excluding)
        with self._lock:
            states = [
                x.state for x in self._tasks.values() if x.job_id == job_id and x.id not in skip
            ]
        return {s: states.count(s) for s in set(states)}

    def owner_task_counts(self, owner: str) -> dict[str, dict[TaskState, int]]:
        counts: dict[str, dict[TaskState, int]] = {}
        with self._lock:
            owned = {j.id for j in self._jobs.values() if j.owner == owner}
            for task in self._tasks.values():
                if task.job_id in owned:
                    per_state = counts.setdefault(task.job_id, {})
                    per_state[task.state] = per_state.get(task.state, 0) + 1
        return counts

    def queued_tasks(self, limit: int, offset: int = 0) -> list[Task]:
        queued = self._select_tasks(
            lambda x: x.state == TaskState.QUEUED,
            key=lambda x: (x.queued_at, x.job_id, x.index, x.replica),
        )
        return queued[offset : offset + limit]

    def running_tasks(self, node_id: str | None = None) -> list[Task]:
        return self._select_tasks(
            lambda x: x.state == TaskState.RUNNING and node_id in (None, x.node_id),
            key=lambda x: (x.id,),
        )

    def expired_leases(self, now: float) -> list[Task]:
        return self._select_tasks(
            lambda x: (
                x.state == TaskState.RUNNING
                and x.lease_expires_at is not None
                and x.lease_expires_at < now
            ),
            key=lambda x: (x.lease_expires_at or 0.0, x.id),
        )

    def _leases_held(self, actors: Sequence[str]) -> dict[str, int]:
        # Called by the log's store with the lock held. Results waiting for their check count:
        # a node may not take its stake away from under a verdict that could slash it.
        held = dict.fromkeys(actors, 0)
        for task in self._tasks.values():
            holding = task.state is TaskState.RUNNING or task.verdict == PENDING_VERDICT
            if holding and task.node_id in held:
                held[task.node_id] += 1
        return held

    def _select_tasks(self, where: _TaskFilter, key: _TaskKey) -> list[Task]:
        with self._lock:
            found = sorted((x for x in self._tasks.values() if where(x)), key=key)
            return [_copy_task(x) for x in found]

    def apply(self, changes: Changes) -> None:
        with self._lock:
            # Check and stage everything first: nothing is written unless all of it fits.
            jobs = _stage_versioned(self._jobs, changes.jobs, "job", _copy_job)
            tasks = _stage_versioned(self._tasks, changes.tasks, "task", _copy_task)
            new_tasks = self._stage_new_tasks(changes.new_tasks)
            # Links, work and updates may name a new task; the union copies every id, so only then.
            known: Set[str] = (
                self._tasks.keys() | new_tasks.keys() if new_tasks else self._tasks.keys()
            )
            links: dict[tuple[str, int], CheckpointLink] = {}
            for link in changes.checkpoints:
                key = (link.task_id, link.seq)
                if key in self._checkpoints or key in links or link.task_id not in known:
                    keys = ", ".join(f"({c.task_id}, seq {c.seq})" for c in changes.checkpoints)
                    raise Conflict(f"checkpoint link taken or its task unknown: {keys}")
                links[key] = link
            for link in changes.rejected_checkpoints:
                key = (link.task_id, link.seq)
                stored = links.get(key) or self._checkpoints.get(key)
                if stored is None:
                    raise NotFound(f"no checkpoint link {link.seq} of task {link.task_id}")
                links[key] = dataclasses.replace(stored, rejected=link.rejected)
            if any(w.task_id not in known for w in changes.work):
                raise Conflict("work record names an unknown task")
            rounds = self._stage_rounds(changes)
            updates = self._stage_updates(changes.updates, known)
            self._jobs.update(jobs)
            self._rounds.update(rounds)
            self._updates.update(updates)
            self._tasks.update(tasks)
            self._tasks.update(new_tasks)
            self._checkpoints.update(links)
            for record in changes.work:
                self._work[(record.task_id, record.attempt)] = dataclasses.replace(record)
        for job in changes.jobs:
            job.version += 1
        for task in changes.tasks:
            task.version += 1
        for changed in changes.rounds:
            changed.version += 1

    def _stage_new_tasks(self, records: list[Task]) -> dict[str, Task]:
        """Copies of ``records`` to insert, or ``Conflict`` if an id or a (job_id, index,
        replica) is taken, or a job is not stored."""
        if not records:
            return {}
        ids = {x.id for x in records}
        copies = {(x.job_id, x.index, x.replica) for x in records}
        stored = {(x.job_id, x.index, x.replica) for x in self._tasks.values()}
        taken = ids & self._tasks.keys() or copies & stored
        unknown_job = any(x.job_id not in self._jobs for x in records)
        if taken or unknown_job or len(ids) != len(records) or len(copies) != len(records):
            keys = ", ".join(f"job {x.job_id} index {x.index} replica {x.replica}" for x in records)
            raise Conflict(f"task taken or its job unknown: {keys}")
        return {x.id: _copy_task(x) for x in records}

    def _stage_rounds(self, changes: Changes) -> dict[tuple[str, int], Round]:
        staged: dict[tuple[str, int], Round] = {}
        # Versions first, as the SQL store does: of two closers of one round, the late one is
        # stale (and backs off), not in conflict over the round it would open next.
        for record in changes.rounds:
            key = (record.job_id, record.index)
            current = staged.get(key) or self._rounds.get(key)
            if current is None:
                raise NotFound(f"job {record.job_id} has no round {record.index}", field="round")
            if current.version != record.version:
                where = f"round {record.index} of job {record.job_id}"
                raise StaleWrite(f"{where} changed concurrently")
            new = _copy_round(record)
            new.version += 1
            staged[key] = new
        for record in changes.new_rounds:
            key = (record.job_id, record.index)
            if key in self._rounds or key in staged or record.job_id not in self._jobs:
                where = f"{record.job_id} round {record.index}"
                raise Conflict(f"round taken or its job unknown: {where}")
            staged[key] = _copy_round(record)
        return staged

    def _stage_updates(
        self, updates: list[RoundUpdate], known: Set[str]
    ) -> dict[tuple[str, int, str], RoundUpdate]:
        staged: dict[tuple[str, int, str], RoundUpdate] = {}
        for update in updates:
            key = (update.job_id, update.round_index, update.task_id)
            if key in self._updates or key in staged:
                raise Conflict(
                    f"task {update.task_id} already sent its update to round {update.round_index}",
                    field="round",
                )
            if update.task_id not in known:
                raise Conflict(f"update names an unknown task {update.task_id}")
            staged[key] = update
        return staged

    # --- training rounds -------------------------------------------------------------------------

    def get_round(self, job_id: str, index: int) -> Round:
        with self._lock:
            record = self._rounds.get((job_id, index))
            if record is None:
                raise NotFound(f"job {job_id} has no round {index}", field="round")
            return _copy_round(record)

    def latest_round(self, job_id: str) -> Round:
        rounds = self.list_rounds(job_id)
        if not rounds:
            raise NotFound(f"job {job_id} has no rounds", field="round")
        return rounds[-1]

    def list_rounds(self, job_id: str) -> list[Round]:
        with self._lock:
            found = [r for (job, _), r in self._rounds.items() if job == job_id]
            return [_copy_round(r) for r in sorted(found, key=lambda r: r.index)]

    def rounds_due(self, now: float) -> list[Round]:
        with self._lock:
            due = [
                r
                for r in self._rounds.values()
                if r.state is RoundState.OPEN and r.deadline_at <= now
            ]
            return [_copy_round(r) for r in sorted(due, key=lambda r: r.deadline_at)]

    def list_updates(self, job_id: str, round_index: int | None = None) -> list[RoundUpdate]:
        with self._lock:
            found = [
                u
                for (job, index, _), u in self._updates.items()
                if job == job_id and round_index in (None, index)
            ]
        # Stable: within a round, the order they arrived in.
        return sorted(found, key=lambda u: u.round_index)

    # --- checkpoints, work, logs ----------------------------------------------------------------

    def list_job_checkpoints(self, job_id: str) -> list[CheckpointLink]:
        with self._lock:
            tasks = {x.id for x in self._tasks.values() if x.job_id == job_id}
            return sorted(
                (c for c in self._checkpoints.values() if c.task_id in tasks),
                key=lambda c: (c.task_id, c.seq),
            )

    def list_checkpoints(self, task_id: str) -> list[CheckpointLink]:
        with self._lock:
            return sorted(
                (c for c in self._checkpoints.values() if c.task_id == task_id),
                key=lambda c: c.seq,
            )

    def get_work(self, task_id: str, attempt: int) -> Work:
        with self._lock:
            work = self._work.get((task_id, attempt))
            if work is None:
                raise NotFound(f"no work record for attempt {attempt} of task {task_id}")
            return dataclasses.replace(work)

    def list_work(self, job_id: str) -> list[Work]:
        with self._lock:
            mine = sorted(k for k, w in self._work.items() if w.job_id == job_id)
            return [dataclasses.replace(self._work[k]) for k in mine]

    def append_log(self, record: LogRecord) -> int:
        with self._lock:
            if record.job_id not in self._jobs:
                raise NotFound(f"no job {record.job_id}")
            seq = next(self._log_seq)
            self._logs.setdefault(record.job_id, []).append(dataclasses.replace(record, seq=seq))
            return seq

    def list_logs(self, job_id: str, after_seq: int, limit: int) -> list[LogRecord]:
        with self._lock:
            chunks = self._logs.get(job_id, [])
            start = bisect.bisect_right(chunks, after_seq, key=lambda r: r.seq)
            return chunks[start : start + limit]

    def tail_logs(self, task_id: str, attempt: int, limit: int) -> list[LogRecord]:
        with self._lock:
            found = [
                r
                for chunks in self._logs.values()
                for r in chunks
                if r.task_id == task_id and r.attempt == attempt
            ]
        found.sort(key=lambda r: r.seq)
        return found[-limit:] if limit > 0 else []

    def ledger(self) -> MemoryLedgerStore:
        """The transparency log's store; one per MemoryStore, like the SQL store's database."""
        return self._ledger

    def close(self) -> None:
        """Nothing to release; here so that both stores are closed the same way."""


_TaskFilter = Callable[[Task], bool]
_TaskKey = Callable[[Task], tuple[object, ...]]


R = TypeVar("R", Job, Task)


def _copy_round(record: Round) -> Round:
    return dataclasses.replace(record, metrics=dict(record.metrics))


def _stage_versioned(
    stored: dict[str, R], records: list[R], kind: str, copy: Callable[[R], R]
) -> dict[str, R]:
    """Copies of ``records`` with bumped versions, or ``Conflict``/``NotFound`` if one is stale."""
    staged: dict[str, R] = {}
    for record in records:
        current = staged.get(record.id) or stored.get(record.id)
        if current is None:
            raise NotFound(f"no {kind} {record.id}")
        if current.version != record.version:
            raise StaleWrite(f"{kind} {record.id} changed concurrently")
        new = copy(record)
        new.version += 1
        staged[record.id] = new
    return staged
