"""The SQL store: SQLite for one hub, PostgreSQL for several hubs sharing one database.

Every method is one short transaction (``engine.begin()``); there is no session or identity map to
go stale between requests. Updates of jobs and tasks are optimistic: ``UPDATE ... WHERE id = :id
AND version = :version``, and a row count of zero means someone else wrote first (``Conflict``).
SQLAlchemy Core rather than the ORM: the hub's hot paths (claim, heartbeat) run hundreds of times a
second and the ORM's unit of work would only add overhead to what are single statements.

The hub calls the store from many threads at once (its handlers run in a thread pool). On SQLite
a write takes the database's write lock up front (``BEGIN IMMEDIATE``): a transaction that began
as a reader and then writes can fail at once with "database is locked" when another writer
committed meanwhile, where one that waits for the lock first cannot. Writers in this process also
take turns on a lock of their own, so that they hand over at once instead of polling SQLite's busy
handler (it sleeps 1, 2, 5, 10... ms between tries); other processes wait on ``busy_timeout``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy import insert as generic_insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Insert

from lumbung.errors import ConfigError, Conflict, NotFound, StaleWrite
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
from lumbung.store import tables as t
from lumbung.store.ledger_sql import SqlLedgerStore
from lumbung.store.protocol import Changes, UnreadableJob
from lumbung.wire.spec import rejected_from_validation

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Connections each engine keeps, and how many more it opens under load: what ``max_connections``
# reports, and so how many requests a hub lets into its core at once (``lumbung.hub.capacity``).
POOL_SIZE = 10
POOL_OVERFLOW = 20
# Any fixed 64-bit number works: every hub process must use the same one ("lumbung" in ASCII).
MIGRATION_LOCK_KEY = int.from_bytes(b"lumbung", "big")
_SQLITE_IMMEDIATE = "lumbung_sqlite_begin_immediate"
# Up to this many jobs or tasks in one ``apply`` are updated one statement each, so that a conflict
# names the stale one; beyond it (a whole job cancelled) one executemany is much faster.
_ROW_BY_ROW_MAX = 16

# The hot paths' statements (claim, heartbeat, completion), built once with bound parameters:
# building a Core statement and its cache key cost about as much as running it on SQLite
# (measured: one task read 320 -> 160 us).
_T, _CP, _W = t.tasks, t.checkpoints, t.work
_NODE_BY_ID = select(t.nodes).where(t.nodes.c.id == bindparam("id"))
_JOB_BY_ID = select(t.jobs).where(t.jobs.c.id == bindparam("id"))
_TASK_BY_ID = select(_T).where(_T.c.id == bindparam("id"))
_STATE_COUNTS = (
    select(_T.c.state, func.count()).where(_T.c.job_id == bindparam("job_id")).group_by(_T.c.state)
)
_OWNER_COUNTS = (
    select(_T.c.job_id, _T.c.state, func.count())
    .join(t.jobs, t.jobs.c.id == _T.c.job_id)
    .where(t.jobs.c.owner == bindparam("owner"))
    .group_by(_T.c.job_id, _T.c.state)
)
_QUEUED = (
    select(_T)
    .where(_T.c.state == TaskState.QUEUED.value)
    .order_by(_T.c.queued_at, _T.c.job_id, _T.c.index, _T.c.replica)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
# On the unique (job_id, index, replica) index, which also returns them in replica order.
_REPLICAS = (
    select(_T)
    .where(_T.c.job_id == bindparam("job_id"), _T.c.index == bindparam("index"))
    .order_by(_T.c.replica)
)
_RUNNING = select(_T).where(_T.c.state == TaskState.RUNNING.value).order_by(_T.c.id)
_RUNNING_ON = _RUNNING.where(_T.c.node_id == bindparam("node_id"))
_CHECKPOINTS = select(_CP).where(_CP.c.task_id == bindparam("task_id")).order_by(_CP.c.seq)
_JOB_CHECKPOINTS = (
    select(_CP)
    .join(_T, _T.c.id == _CP.c.task_id)
    .where(_T.c.job_id == bindparam("job_id"))
    .order_by(_CP.c.task_id, _CP.c.seq)
)
_WORK_OF_JOB = (
    select(_W).where(_W.c.job_id == bindparam("job_id")).order_by(_W.c.task_id, _W.c.attempt)
)
_WORK_BY_ATTEMPT = select(_W).where(
    _W.c.task_id == bindparam("task_id"), _W.c.attempt == bindparam("attempt")
)
_NEW_NONCE = generic_insert(t.nonces)
_NS = t.node_streaks
_STREAK = select(_NS.c.valid_streak).where(
    _NS.c.node_id == bindparam("node_id"), _NS.c.workload == bindparam("workload")
)
_NODE_STREAKS = (
    select(_NS.c.workload, _NS.c.valid_streak)
    .where(_NS.c.node_id == bindparam("node_id"))
    .order_by(_NS.c.workload)
)
_HEARTBEAT = (
    t.nodes.update()
    .where(t.nodes.c.id == bindparam("b_id"))
    .values(
        last_heartbeat_at=bindparam("b_at"),
        free_slots=bindparam("b_free_slots"),
        draining=bindparam("b_draining"),
        version=t.nodes.c.version + 1,
    )
)


def _versioned_update(table: Table) -> Any:
    return (
        table.update()
        .where(table.c.id == bindparam("b_id"), table.c.version == bindparam("b_version"))
        .values(version=table.c.version + 1)
    )


_VERSIONED = {table.name: _versioned_update(table) for table in (t.jobs, t.tasks)}


class SqlStore:
    """``Store`` on SQLAlchemy; ``SqlStore.open(url)`` migrates to the newest schema."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        on_sqlite = engine.dialect.name == "sqlite"
        self._insert: Callable[[Table], Insert] = sqlite.insert if on_sqlite else postgresql.insert
        # Writes begin IMMEDIATE on SQLite, one at a time in this process (see the module's doc).
        self._writer = engine.execution_options(**{_SQLITE_IMMEDIATE: True})
        self._write_lock = threading.Lock() if on_sqlite else None
        self._ledger: SqlLedgerStore | None = None
        # A node's heartbeat minutes (its reliability): the first heartbeat of a minute counts.
        self._heartbeat_minute = self._insert(t.heartbeat_minutes).on_conflict_do_nothing()
        self._minutes_recorded: dict[str, int] = {}  # node -> the last minute this process wrote
        # A node's streak moves in the database, so that hubs counting at once lose no result:
        # one more (or several) on the stored count, or set outright after an invalid result.
        streak = self._insert(t.node_streaks)
        pair = ["node_id", "workload"]
        self._streak_add = streak.on_conflict_do_update(
            index_elements=pair,
            set_={
                "valid_streak": _NS.c.valid_streak + streak.excluded.valid_streak,
                "updated_at": streak.excluded.updated_at,
            },
        )
        self._streak_set = streak.on_conflict_do_update(
            index_elements=pair,
            set_={
                "valid_streak": streak.excluded.valid_streak,
                "updated_at": streak.excluded.updated_at,
            },
        )
        work = self._insert(t.work)
        keys = ("task_id", "attempt")
        self._work_upsert = work.on_conflict_do_update(
            index_elements=list(keys),
            set_={c.name: work.excluded[c.name] for c in t.work.columns if c.name not in keys},
        )

    @classmethod
    def open(cls, url: str) -> SqlStore:
        engine = _create_engine(url)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def max_connections(self) -> int:
        return POOL_SIZE + POOL_OVERFLOW

    def close(self) -> None:
        self._engine.dispose()

    def ledger(self) -> SqlLedgerStore:
        """The transparency log's store, on this store's engine (and so its database); it writes
        as this store does (``_write``)."""
        if self._ledger is None:
            self._ledger = SqlLedgerStore(self._engine, self._write)
        return self._ledger

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: on SQLite IMMEDIATE, and one at a time in this process."""
        with self._write_lock or contextlib.nullcontext(), self._writer.begin() as conn:
            yield conn

    # --- actors and replay protection -----------------------------------------------------------

    def ensure_actor(self, actor_id: str, public_key: bytes, now: float) -> None:
        stmt = self._insert(t.actors).values(id=actor_id, public_key=public_key, created_at=now)
        with self._write() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))  # type: ignore[attr-defined]

    def use_nonce(self, actor_id: str, nonce: str, expires_at: float) -> None:
        row = {"actor_id": actor_id, "nonce": nonce, "expires_at": expires_at}
        try:
            with self._write() as conn:
                conn.execute(_NEW_NONCE, row)
        except IntegrityError as exc:
            raise Conflict("replayed signature nonce") from exc

    def purge_nonces(self, now: float) -> int:
        with self._write() as conn:
            return conn.execute(t.nonces.delete().where(t.nonces.c.expires_at < now)).rowcount

    # --- nodes ------------------------------------------------------------------------------------

    def put_node(self, node: Node) -> None:
        row = t.node_row(node)
        replaced = {k: v for k, v in row.items() if k not in ("id", "version")}
        stmt = self._insert(t.nodes).values(row)
        stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
            index_elements=["id"], set_={**replaced, "version": t.nodes.c.version + 1}
        ).returning(t.nodes.c.version)
        with self._write() as conn:
            node.version = conn.execute(stmt).scalar_one()

    def get_node(self, node_id: str) -> Node:
        rows = self._rows(_NODE_BY_ID, {"id": node_id})
        if not rows:
            raise NotFound(f"no node {node_id}")
        return t.node_from_row(rows[0])

    def list_nodes(self) -> list[Node]:
        return [t.node_from_row(r) for r in self._rows(select(t.nodes).order_by(t.nodes.c.id))]

    def record_heartbeat(self, node_id: str, now: float, free_slots: int, draining: bool) -> None:
        beat = {"b_id": node_id, "b_at": now, "b_free_slots": free_slots, "b_draining": draining}
        minute = int(now // 60)
        with self._write() as conn:
            if conn.execute(_HEARTBEAT, beat).rowcount == 0:
                raise NotFound(f"no node {node_id}")
            # A node heartbeats several times a minute; only its minute's first one is new.
            if self._minutes_recorded.get(node_id) != minute:
                conn.execute(self._heartbeat_minute, {"node_id": node_id, "minute": minute})
        self._minutes_recorded[node_id] = minute  # after the commit: a rollback records nothing

    def purge_heartbeat_minutes(self, before: float) -> int:
        hm = t.heartbeat_minutes
        with self._write() as conn:
            return conn.execute(hm.delete().where(hm.c.minute < int(before // 60))).rowcount

    def heartbeat_minutes(self, since: float, node_id: str | None = None) -> dict[str, int]:
        hm = t.heartbeat_minutes
        # The minute that contains ``since`` counts: it may hold a heartbeat sent after ``since``.
        stmt = (
            select(hm.c.node_id, func.count())
            .where(hm.c.minute >= int(since // 60))
            .group_by(hm.c.node_id)
        )
        if node_id is not None:
            stmt = stmt.where(hm.c.node_id == node_id)
        return {node: int(count) for node, count in self._tuples(stmt)}

    # --- nodes' streaks of valid results ---------------------------------------------------------

    def valid_streak(self, node_id: str, workload: str) -> int:
        rows = self._tuples(_STREAK, {"node_id": node_id, "workload": workload})
        return int(rows[0][0]) if rows else 0

    def record_results(self, results: Sequence[tuple[str, str, bool]], now: float) -> None:
        # One upsert per pair, in key order: two hubs' transactions on PostgreSQL then lock the
        # rows they share in the same order and cannot deadlock.
        moves = _streak_moves(results)
        with self._write() as conn:
            for (node_id, workload), (reset, valid) in sorted(moves.items()):
                row = {
                    "node_id": node_id,
                    "workload": workload,
                    "valid_streak": valid,
                    "updated_at": now,
                }
                conn.execute(self._streak_set if reset else self._streak_add, row)

    def node_streaks(self, node_id: str) -> dict[str, int]:
        rows = self._tuples(_NODE_STREAKS, {"node_id": node_id})
        return {workload: int(count) for workload, count in rows}

    # --- jobs and tasks -------------------------------------------------------------------------

    def create_job(self, job: Job, tasks: Sequence[Task]) -> None:
        try:
            with self._write() as conn:
                conn.execute(generic_insert(t.jobs), t.job_row(job))
                if tasks:
                    conn.execute(generic_insert(t.tasks), [t.task_row(x) for x in tasks])
        except IntegrityError as exc:
            raise Conflict(f"job {job.id} or one of its tasks already exists") from exc

    def get_job(self, job_id: str) -> Job:
        rows = self._rows(_JOB_BY_ID, {"id": job_id})
        if not rows:
            raise NotFound(f"no job {job_id}")
        return _job_from_row(rows[0])

    def list_jobs(self, owner: str) -> list[Job]:
        jobs = t.jobs
        stmt = (
            select(jobs)
            .where(jobs.c.owner == owner)
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        )
        listed = []
        for row in self._rows(stmt):
            try:
                listed.append(_job_from_row(row))
            except UnreadableJob:
                continue  # one bad row must not hide the owner's other jobs
        return listed

    def fail_job(self, job_id: str, error: str, now: float) -> None:
        jc, live = t.jobs.c, (JobState.QUEUED.value, JobState.RUNNING.value)
        unfinished = (TaskState.QUEUED.value, TaskState.RUNNING.value)
        with self._write() as conn:
            failed = conn.execute(
                update(t.jobs)
                .where(jc.id == job_id, jc.state.in_(live))
                .values(
                    state=JobState.FAILED.value,
                    error=error,
                    waiting_reason=None,
                    updated_at=now,
                    version=jc.version + 1,
                )
            )
            if failed.rowcount == 0:
                if conn.execute(select(jc.id).where(jc.id == job_id)).first() is None:
                    raise NotFound(f"no job {job_id}")
                return  # already over
            conn.execute(
                update(_T)
                .where(_T.c.job_id == job_id, _T.c.state.in_(unfinished))
                .values(
                    state=TaskState.CANCELLED.value,
                    lease_expires_at=None,
                    updated_at=now,
                    version=_T.c.version + 1,
                )
            )

    def get_task(self, task_id: str) -> Task:
        rows = self._rows(_TASK_BY_ID, {"id": task_id})
        if not rows:
            raise NotFound(f"no task {task_id}")
        return t.task_from_row(rows[0])

    def list_tasks(self, job_id: str) -> list[Task]:
        tasks = t.tasks
        stmt = (
            select(tasks).where(tasks.c.job_id == job_id).order_by(tasks.c.index, tasks.c.replica)
        )
        return [t.task_from_row(r) for r in self._rows(stmt)]

    def list_replicas(self, job_id: str, index: int) -> list[Task]:
        rows = self._rows(_REPLICAS, {"job_id": job_id, "index": index})
        return [t.task_from_row(r) for r in rows]

    def task_state_counts(self, job_id: str, excluding: Sequence[str] = ()) -> dict[TaskState, int]:
        stmt = _STATE_COUNTS
        if excluding:
            stmt = stmt.where(_T.c.id.not_in(list(excluding)))
        return {TaskState(s): int(n) for s, n in self._tuples(stmt, {"job_id": job_id})}

    def owner_task_counts(self, owner: str) -> dict[str, dict[TaskState, int]]:
        counts: dict[str, dict[TaskState, int]] = {}
        for job_id, state, n in self._tuples(_OWNER_COUNTS, {"owner": owner}):
            counts.setdefault(job_id, {})[TaskState(state)] = int(n)
        return counts

    def queued_tasks(self, limit: int, offset: int = 0) -> list[Task]:
        rows = self._rows(_QUEUED, {"limit": limit, "offset": offset})
        return [t.task_from_row(r) for r in rows]

    def running_tasks(self, node_id: str | None = None) -> list[Task]:
        if node_id is None:
            return [t.task_from_row(r) for r in self._rows(_RUNNING)]
        return [t.task_from_row(r) for r in self._rows(_RUNNING_ON, {"node_id": node_id})]

    def expired_leases(self, now: float) -> list[Task]:
        tasks = t.tasks
        stmt = (
            select(tasks)
            .where(tasks.c.state == TaskState.RUNNING.value, tasks.c.lease_expires_at < now)
            .order_by(tasks.c.lease_expires_at, tasks.c.id)
        )
        return [t.task_from_row(r) for r in self._rows(stmt)]

    def apply(self, changes: Changes) -> None:
        with self._write() as conn:
            _update_versioned(conn, t.jobs, "job", [t.job_row(j) for j in changes.jobs])
            _update_versioned(conn, t.tasks, "task", [t.task_row(x) for x in changes.tasks])
            if changes.new_tasks:  # before the links and work that may name them
                _insert_tasks(conn, changes.new_tasks)
            if changes.checkpoints:
                self._insert_checkpoints(conn, changes.checkpoints)
            if changes.rejected_checkpoints:
                _reject_checkpoints(conn, changes.rejected_checkpoints)
            if changes.work:
                self._upsert_work(conn, changes.work)
            self._write_rounds(conn, changes)
        # Only after the commit: a rolled-back batch must leave the callers' objects as they were.
        for job in changes.jobs:
            job.version += 1
        for task in changes.tasks:
            task.version += 1
        for record in changes.rounds:
            record.version += 1

    def _write_rounds(self, conn: Connection, changes: Changes) -> None:
        # Versioned updates before inserts: of two closers of one round, the late one waits on
        # the round's row lock (PostgreSQL), finds its version gone and is stale (it backs off).
        # Inserting the next round first would fail it on that round's key instead: a Conflict.
        for record in changes.rounds:
            row = t.round_row(record)
            row["version"] = record.version + 1
            rc = t.rounds.c
            result = conn.execute(
                update(t.rounds)
                .where(
                    rc.job_id == record.job_id,
                    rc.idx == record.index,
                    rc.version == record.version,
                )
                .values(row)
            )
            if result.rowcount != 1:
                raise StaleWrite(
                    f"round {record.index} of job {record.job_id} changed concurrently"
                )
        if changes.new_rounds:
            try:
                conn.execute(generic_insert(t.rounds), [t.round_row(r) for r in changes.new_rounds])
            except IntegrityError as exc:
                keys = ", ".join(f"{r.job_id} round {r.index}" for r in changes.new_rounds)
                raise Conflict(f"round taken or its job unknown: {keys}") from exc
        if changes.updates:
            try:
                rows = [t.update_row(u) for u in changes.updates]
                conn.execute(generic_insert(t.round_updates), rows)
            except IntegrityError as exc:
                first = changes.updates[0]
                raise Conflict(
                    f"task {first.task_id} already sent its update to round {first.round_index}",
                    field="round",
                ) from exc

    def _insert_checkpoints(self, conn: Connection, links: list[CheckpointLink]) -> None:
        try:
            conn.execute(generic_insert(t.checkpoints), [t.checkpoint_row(c) for c in links])
        except IntegrityError as exc:
            keys = ", ".join(f"({c.task_id}, seq {c.seq})" for c in links)
            raise Conflict(f"checkpoint link taken or its task unknown: {keys}") from exc

    def _upsert_work(self, conn: Connection, records: list[Work]) -> None:
        try:
            conn.execute(self._work_upsert, [t.work_row(w) for w in records])
        except IntegrityError as exc:
            raise Conflict("work record names an unknown task") from exc

    # --- checkpoints, work, logs ----------------------------------------------------------------

    def list_checkpoints(self, task_id: str) -> list[CheckpointLink]:
        rows = self._rows(_CHECKPOINTS, {"task_id": task_id})
        return [t.checkpoint_from_row(r) for r in rows]

    def list_job_checkpoints(self, job_id: str) -> list[CheckpointLink]:
        rows = self._rows(_JOB_CHECKPOINTS, {"job_id": job_id})
        return [t.checkpoint_from_row(r) for r in rows]

    def list_work(self, job_id: str) -> list[Work]:
        return [t.work_from_row(r) for r in self._rows(_WORK_OF_JOB, {"job_id": job_id})]

    def get_work(self, task_id: str, attempt: int) -> Work:
        rows = self._rows(_WORK_BY_ATTEMPT, {"task_id": task_id, "attempt": attempt})
        if not rows:
            raise NotFound(f"no work record for attempt {attempt} of task {task_id}")
        return t.work_from_row(rows[0])

    # --- training rounds -------------------------------------------------------------------------

    def get_round(self, job_id: str, index: int) -> Round:
        rc = t.rounds.c
        rows = self._rows(select(t.rounds).where(rc.job_id == job_id, rc.idx == index))
        if not rows:
            raise NotFound(f"job {job_id} has no round {index}", field="round")
        return t.round_from_row(rows[0])

    def latest_round(self, job_id: str) -> Round:
        rc = t.rounds.c
        stmt = select(t.rounds).where(rc.job_id == job_id).order_by(rc.idx.desc()).limit(1)
        rows = self._rows(stmt)
        if not rows:
            raise NotFound(f"job {job_id} has no rounds", field="round")
        return t.round_from_row(rows[0])

    def list_rounds(self, job_id: str) -> list[Round]:
        rc = t.rounds.c
        stmt = select(t.rounds).where(rc.job_id == job_id).order_by(rc.idx)
        return [t.round_from_row(r) for r in self._rows(stmt)]

    def rounds_due(self, now: float) -> list[Round]:
        rc = t.rounds.c
        stmt = (
            select(t.rounds)
            .where(rc.state == RoundState.OPEN.value, rc.deadline_at <= now)
            .order_by(rc.deadline_at)
        )
        return [t.round_from_row(r) for r in self._rows(stmt)]

    def list_updates(self, job_id: str, round_index: int | None = None) -> list[RoundUpdate]:
        uc = t.round_updates.c
        stmt = select(t.round_updates).where(uc.job_id == job_id)
        if round_index is not None:
            stmt = stmt.where(uc.round_index == round_index)
        stmt = stmt.order_by(uc.round_index, uc.created_at, uc.task_id)
        return [t.update_from_row(r) for r in self._rows(stmt)]

    def append_log(self, record: LogRecord) -> int:
        values = {c.name: getattr(record, c.name) for c in t.logs.columns if c.name != "seq"}
        try:
            with self._write() as conn:
                result = conn.execute(generic_insert(t.logs).values(values))
                key = result.inserted_primary_key
        except IntegrityError as exc:
            raise NotFound(f"no job {record.job_id}") from exc
        assert key is not None  # an INSERT of one row always reports its key
        return int(key[0])

    def list_logs(self, job_id: str, after_seq: int, limit: int) -> list[LogRecord]:
        logs = t.logs
        stmt = (
            select(logs)
            .where(logs.c.job_id == job_id, logs.c.seq > after_seq)
            .order_by(logs.c.seq)
            .limit(limit)
        )
        return [t.log_from_row(r) for r in self._rows(stmt)]

    def tail_logs(self, task_id: str, attempt: int, limit: int) -> list[LogRecord]:
        logs = t.logs
        stmt = (
            select(logs)
            .where(logs.c.task_id == task_id, logs.c.attempt == attempt)
            .order_by(logs.c.seq.desc())
            .limit(limit)
        )
        return [t.log_from_row(r) for r in reversed(self._rows(stmt))]

    def _rows(self, stmt: Any, params: dict[str, Any] | None = None) -> list[Any]:
        with self._engine.connect() as conn:
            return list(conn.execute(stmt, params).mappings())

    def _tuples(self, stmt: Any, params: dict[str, Any] | None = None) -> list[Any]:
        with self._engine.connect() as conn:
            return list(conn.execute(stmt, params).all())


def _job_from_row(row: Any) -> Job:
    """``tables.job_from_row``, or ``UnreadableJob`` for a spec that no longer validates."""
    try:
        return t.job_from_row(row)
    except ValidationError as exc:
        reason = rejected_from_validation(exc).message
        raise UnreadableJob(row["id"], row["owner"], JobState(row["state"]), reason) from exc


def _streak_moves(
    results: Sequence[tuple[str, str, bool]],
) -> dict[tuple[str, str], tuple[bool, int]]:
    """What ``results``, applied in order, do to each pair's stored count: (reset, valid) means
    "set it to ``valid``" when an invalid result reset it, else "add ``valid`` to it"."""
    moves: dict[tuple[str, str], tuple[bool, int]] = {}
    for node_id, workload, is_valid in results:
        reset, valid = moves.get((node_id, workload), (False, 0))
        moves[(node_id, workload)] = (reset, valid + 1) if is_valid else (True, 0)
    return moves


def _update_versioned(
    conn: Connection, table: Table, kind: str, rows: list[dict[str, Any]]
) -> None:
    """Write rows whose stored ``version`` still equals theirs, bumping it; else ``Conflict``.

    Raising inside the caller's transaction rolls back everything it wrote before.
    """
    stmt = _VERSIONED[table.name]
    params = []
    for row in rows:
        param = {k: v for k, v in row.items() if k not in ("id", "version")}
        param["b_id"], param["b_version"] = row["id"], row["version"]
        params.append(param)
    if len(params) <= _ROW_BY_ROW_MAX:
        for param in params:
            if conn.execute(stmt, param).rowcount == 0:
                _raise_stale(conn, table, kind, [param["b_id"]])
        return
    # Many rows (a job cancelled whole): one executemany; both drivers report the summed count.
    if conn.execute(stmt, params).rowcount != len(params):
        _raise_stale(conn, table, kind, [p["b_id"] for p in params])


def _insert_tasks(conn: Connection, tasks: list[Task]) -> None:
    """Insert tasks into stored jobs; ``Conflict`` (rolling back) for a taken id or (job_id,
    index, replica), or an unknown job."""
    try:
        conn.execute(generic_insert(t.tasks), [t.task_row(x) for x in tasks])
    except IntegrityError as exc:
        keys = ", ".join(f"job {x.job_id} index {x.index} replica {x.replica}" for x in tasks)
        raise Conflict(f"task taken or its job unknown: {keys}") from exc


def _reject_checkpoints(conn: Connection, links: list[CheckpointLink]) -> None:
    """Set each stored link's ``rejected`` reason; ``NotFound`` (rolling back) for a missing one."""
    for link in links:
        where = (_CP.c.task_id == link.task_id, _CP.c.seq == link.seq)
        result = conn.execute(update(_CP).where(*where).values(rejected=link.rejected))
        if result.rowcount != 1:
            raise NotFound(f"no checkpoint link {link.seq} of task {link.task_id}")


def _raise_stale(conn: Connection, table: Table, kind: str, ids: list[str]) -> None:
    found = set(conn.scalars(select(table.c.id).where(table.c.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"no {kind} {missing[0]}")
    if len(ids) == 1:
        raise StaleWrite(f"{kind} {ids[0]} changed concurrently")
    raise StaleWrite(f"one of {len(ids)} {kind}s ({ids[0]}, ...) changed concurrently")


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            parsed, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_use_lifo=True
        )
    if not parsed.database or parsed.database == ":memory:":
        raise ConfigError(
            "an in-memory SQLite database is one per connection; give the hub a file",
            field="db_url",
        )
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # Last in, first out (PostgreSQL too): the few connections in use at a time stay the same
    # ones and their caches warm. First in, first out handed each request the connection idle
    # longest, whose SQLite page cache every other connection's writes had made stale; measured
    # on the throughput benchmark, hub CPU per task fell from 15 to 9.6 ms.
    engine = create_engine(
        parsed, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_use_lifo=True
    )
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling begins late and never around DDL: turn it off and
        # emit BEGIN ourselves below (SQLAlchemy's documented recipe for pysqlite).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL: readers never block the writer; NORMAL is durable at checkpoints and never corrupts.
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two writers (threads, or processes migrating
        # at once) queue on busy_timeout instead of one failing when it upgrades its read lock.
        immediate = conn.get_execution_options().get(_SQLITE_IMMEDIATE, False)
        # On the driver's connection: through SQLAlchemy, BEGIN cost as much as a short query.
        driver: Any = conn.connection.driver_connection
        driver.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    # Switching a file to WAL needs an exclusive lock, and SQLite answers "database is locked" at
    # once, without its busy handler, when waiting could deadlock: seen in CI with four hubs
    # opening one new file together. WAL is a property of the file, so whoever comes second
    # usually finds it set already; otherwise retry until the busy timeout.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema; safe when several hubs start at once."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as conn:
        conn.execution_options(**{_SQLITE_IMMEDIATE: True})
        with conn.begin():
            if engine.dialect.name == "postgresql":
                # Held until this transaction ends; PostgreSQL's DDL is transactional, so whoever
                # waits here then finds the schema at head and does nothing.
                conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
