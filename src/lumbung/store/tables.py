"""The SQL schema as SQLAlchemy Core tables: one row shape per domain record.

This is what the code reads and writes; ``migrations/versions`` is how a database gets there. A test
compares the two (Alembic's ``compare_metadata``) so they cannot drift apart.

Times are Unix seconds as double precision, money is integer micro-credits (BigInteger), nested
values (the job spec, a node's inventory, task params and outputs) are JSON text: they are read and
written whole, never queried into.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

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
from lumbung.wire.api import Inventory
from lumbung.wire.spec import JobSpec

metadata = MetaData()

# SQLite only auto-numbers an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a 64-bit identity.
LogSeq = BigInteger().with_variant(Integer(), "sqlite")

actors = Table(
    "actors",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
)

nonces = Table(
    "nonces",
    metadata,
    # The primary key is the uniqueness that makes a replayed nonce fail.
    Column("actor_id", String(64), primary_key=True),
    Column("nonce", String, primary_key=True),
    Column("expires_at", Double, nullable=False),
    Index("ix_nonces_expires_at", "expires_at"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String, nullable=False),
    Column("inventory", Text, nullable=False),
    Column("price_micro_per_gpu_hour", BigInteger, nullable=False),
    Column("price_micro_per_cpu_hour", BigInteger, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("free_slots", Integer, nullable=False),
    Column("draining", Boolean, nullable=False),
    Column("registered_at", Double, nullable=False),
    Column("last_heartbeat_at", Double, nullable=True),
    Column("version", Integer, nullable=False),
)

heartbeat_minutes = Table(
    "heartbeat_minutes",
    metadata,
    Column("node_id", String(64), ForeignKey("nodes.id"), primary_key=True),
    Column("minute", Integer, primary_key=True, autoincrement=False),
    Index("ix_heartbeat_minutes_minute", "minute"),
)

# Per node and kind of work, how many of its results in a row a quorum found valid: the hub's
# adaptive replication checks a node less often as this grows, and an invalid result resets it.
node_streaks = Table(
    "node_streaks",
    metadata,
    Column("node_id", String(64), primary_key=True),
    Column("workload", String(64), primary_key=True),  # lumbung.hub.replication.workload_of
    Column("valid_streak", BigInteger, nullable=False),
    Column("updated_at", Double, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("name", String, nullable=False),
    Column("spec", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("error", Text, nullable=True),
    Column("waiting_reason", Text, nullable=True),
    Column("version", Integer, nullable=False),
    Index("ix_jobs_owner_created_at", "owner", "created_at"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("job_id", String(64), ForeignKey("jobs.id"), nullable=False),
    Column("index", Integer, nullable=False),
    Column("params", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("queued_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("node_id", String(64), nullable=True),
    Column("lease_expires_at", Double, nullable=True),
    Column("started_at", Double, nullable=True),
    Column("progress", Double, nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("outputs", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("last_checkpoint_sha", String(64), nullable=True),
    Column("log_bytes", BigInteger, nullable=False),
    Column("replica", Integer, nullable=False, server_default="0"),  # copy of (job_id, index)
    Column("verdict", String(16), nullable=True),  # the quorum's finding on this replica
    Column("execution_class", String(64), nullable=True),  # digest the result committed to
    Column("version", Integer, nullable=False),
    # One row per copy of a logical task; it also serves ``list_replicas``.
    Index("ux_tasks_job_id_index_replica", "job_id", "index", "replica", unique=True),
    Index("ix_tasks_state_queued_at", "state", "queued_at"),
    Index("ix_tasks_job_id_state", "job_id", "state"),
    Index("ix_tasks_state_lease_expires_at", "state", "lease_expires_at"),
    Index("ix_tasks_node_id", "node_id"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("task_id", String(64), ForeignKey("tasks.id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("sha256", String(64), nullable=False),
    Column("prev_sha256", String(64), nullable=True),
    Column("node_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("progress", Double, nullable=False),
    Column("runtime_s", Double, nullable=False),
    Column("kept_s", Double, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("rejected", Text, nullable=True),  # why a later node could not restore it
)

work = Table(
    "work",
    metadata,
    Column("task_id", String(64), ForeignKey("tasks.id"), primary_key=True),
    Column("attempt", Integer, primary_key=True, autoincrement=False),
    Column("job_id", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("price_micro_per_hour", BigInteger, nullable=False),
    Column("kept_s", Double, nullable=False),
    Column("lost_s", Double, nullable=False),
    Index("ix_work_job_id", "job_id"),
)

rounds = Table(
    "rounds",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.id"), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
    Column("opened_at", Double, nullable=False),
    Column("deadline_at", Double, nullable=False),
    Column("base_sha", String(64), nullable=True),
    Column("change_sha", String(64), nullable=True),
    Column("state_sha", String(64), nullable=True),
    Column("closed_at", Double, nullable=True),
    Column("participants", Integer, nullable=False),
    Column("metrics", Text, nullable=False),  # JSON object of floats
    Column("screened", Text, nullable=False, server_default="{}"),  # JSON: task id -> reason
    Column("version", Integer, nullable=False),
    Index("ix_rounds_state_deadline_at", "state", "deadline_at"),
)

round_updates = Table(
    "round_updates",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("round_index", Integer, primary_key=True, autoincrement=False),
    Column("task_id", String(64), ForeignKey("tasks.id"), primary_key=True),
    Column("node_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("inner_steps", Integer, nullable=False),
    Column("train_loss", Double, nullable=False),
    Column("base_val_loss", Double, nullable=True),
    Column("bytes_down", BigInteger, nullable=False),
    Column("device", String(32), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("runtime_s", Double, nullable=False, server_default="0"),
)

logs = Table(
    "logs",
    metadata,
    Column("seq", LogSeq, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id"), nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("stream", String, nullable=False),
    Column("text", Text, nullable=False),
    Column("at", Double, nullable=False),
    Index("ix_logs_job_id_seq", "job_id", "seq"),
    Index("ix_logs_task_id_attempt_seq", "task_id", "attempt", "seq"),
)


# --- records to rows and back ---------------------------------------------------------------------
# Written field by field rather than with dataclasses.asdict, which deep-copies and is several times
# slower on the hot paths (claims, heartbeats).

_NODE_PLAIN = [c.name for c in nodes.columns if c.name != "inventory"]
_JOB_PLAIN = [c.name for c in jobs.columns if c.name not in ("spec", "state")]
_TASK_PLAIN = [c.name for c in tasks.columns if c.name not in ("params", "outputs", "state")]
_CHECKPOINT_FIELDS = [c.name for c in checkpoints.columns]
_WORK_FIELDS = [c.name for c in work.columns]
_UPDATE_FIELDS = [c.name for c in round_updates.columns]


def node_row(node: Node) -> dict[str, Any]:
    row = {name: getattr(node, name) for name in _NODE_PLAIN}
    row["inventory"] = node.inventory.model_dump_json()
    return row


def node_from_row(row: Mapping[Any, Any]) -> Node:
    values = {name: row[name] for name in _NODE_PLAIN}
    return Node(inventory=Inventory.model_validate_json(row["inventory"]), **values)


def job_row(job: Job) -> dict[str, Any]:
    row = {name: getattr(job, name) for name in _JOB_PLAIN}
    row["spec"] = job.spec.model_dump_json()
    row["state"] = job.state.value
    return row


def job_from_row(row: Mapping[Any, Any]) -> Job:
    values = {name: row[name] for name in _JOB_PLAIN}
    spec = JobSpec.model_validate_json(row["spec"])
    return Job(spec=spec, state=JobState(row["state"]), **values)


def task_row(task: Task) -> dict[str, Any]:
    row = {name: getattr(task, name) for name in _TASK_PLAIN}
    row["params"] = json.dumps(task.params)
    row["outputs"] = json.dumps(task.outputs)
    row["state"] = task.state.value
    return row


def task_from_row(row: Mapping[Any, Any]) -> Task:
    values = {name: row[name] for name in _TASK_PLAIN}
    return Task(
        params=json.loads(row["params"]),
        outputs=json.loads(row["outputs"]),
        state=TaskState(row["state"]),
        **values,
    )


def checkpoint_row(link: CheckpointLink) -> dict[str, Any]:
    return {name: getattr(link, name) for name in _CHECKPOINT_FIELDS}


def checkpoint_from_row(row: Mapping[Any, Any]) -> CheckpointLink:
    return CheckpointLink(**{name: row[name] for name in _CHECKPOINT_FIELDS})


def work_row(record: Work) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _WORK_FIELDS}


def work_from_row(row: Mapping[Any, Any]) -> Work:
    return Work(**{name: row[name] for name in _WORK_FIELDS})


def log_from_row(row: Mapping[Any, Any]) -> LogRecord:
    return LogRecord(**{c.name: row[c.name] for c in logs.columns})


# --- the transparency log (lumbung.ledger) --------------------------------------------------------
# Leaves are the exact bytes the Merkle tree hashes; nodes are the tree's perfect subtrees
# (lumbung.ledger.tree), write-once. ``ledger_meta`` has one row, id 1, holding the tree size: an
# append moves it with ``UPDATE ... WHERE size = :expected`` so two hubs cannot both append at the
# same index.

ledger_leaves = Table(
    "ledger_leaves",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("leaf", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
    Index("ix_ledger_leaves_leaf_hash", "leaf_hash", unique=True),
)

ledger_nodes = Table(
    "ledger_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

ledger_meta = Table(
    "ledger_meta",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
)

ledger_checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
)


def round_row(record: Round) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "idx": record.index,
        "state": record.state.value,
        "opened_at": record.opened_at,
        "deadline_at": record.deadline_at,
        "base_sha": record.base_sha,
        "change_sha": record.change_sha,
        "state_sha": record.state_sha,
        "closed_at": record.closed_at,
        "participants": record.participants,
        "metrics": json.dumps(record.metrics, sort_keys=True),
        "screened": json.dumps(record.screened, sort_keys=True),
        "version": record.version,
    }


def round_from_row(row: Mapping[Any, Any]) -> Round:
    return Round(
        job_id=row["job_id"],
        index=row["idx"],
        state=RoundState(row["state"]),
        opened_at=row["opened_at"],
        deadline_at=row["deadline_at"],
        base_sha=row["base_sha"],
        change_sha=row["change_sha"],
        state_sha=row["state_sha"],
        closed_at=row["closed_at"],
        participants=row["participants"],
        metrics=json.loads(row["metrics"]),
        screened=json.loads(row["screened"]),
        version=row["version"],
    )


def update_row(update: RoundUpdate) -> dict[str, Any]:
    return {name: getattr(update, name) for name in _UPDATE_FIELDS}


def update_from_row(row: Mapping[Any, Any]) -> RoundUpdate:
    return RoundUpdate(**{name: row[name] for name in _UPDATE_FIELDS})
