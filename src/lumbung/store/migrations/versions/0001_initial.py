"""The first schema: actors, nonces, nodes, heartbeats, jobs, tasks, checkpoints, work, logs.

Written out rather than derived from ``lumbung.store.tables`` so that this migration keeps meaning
the same thing after the tables change; a test checks the migrated schema equals the tables.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.String(64)


def _times(*names: str, nullable: bool = False) -> list[sa.Column]:
    return [sa.Column(name, sa.Double, nullable=nullable) for name in names]


def upgrade() -> None:
    op.create_table(
        "actors",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        *_times("created_at"),
    )
    op.create_table(
        "nonces",
        sa.Column("actor_id", _ID, primary_key=True),
        sa.Column("nonce", sa.String, primary_key=True),
        *_times("expires_at"),
    )
    op.create_index("ix_nonces_expires_at", "nonces", ["expires_at"])
    op.create_table(
        "nodes",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("inventory", sa.Text, nullable=False),
        sa.Column("price_micro_per_gpu_hour", sa.BigInteger, nullable=False),
        sa.Column("price_micro_per_cpu_hour", sa.BigInteger, nullable=False),
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("free_slots", sa.Integer, nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False),
        *_times("registered_at"),
        *_times("last_heartbeat_at", nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "heartbeat_minutes",
        sa.Column("node_id", _ID, sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("minute", sa.Integer, primary_key=True, autoincrement=False),
    )
    _create_jobs_and_tasks()
    _create_task_children()


def _create_jobs_and_tasks() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("owner", _ID, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        *_times("created_at", "updated_at"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("waiting_reason", sa.Text, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_jobs_owner_created_at", "jobs", ["owner", "created_at"])
    op.create_table(
        "tasks",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("job_id", _ID, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        *_times("queued_at", "updated_at"),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("node_id", _ID, nullable=True),
        *_times("lease_expires_at", "started_at", nullable=True),
        sa.Column("progress", sa.Double, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("last_checkpoint_sha", sa.String(64), nullable=True),
        sa.Column("log_bytes", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_tasks_state_queued_at", "tasks", ["state", "queued_at"])
    op.create_index("ix_tasks_job_id", "tasks", ["job_id"])
    op.create_index("ix_tasks_state_lease_expires_at", "tasks", ["state", "lease_expires_at"])
    op.create_index("ix_tasks_node_id", "tasks", ["node_id"])


def _create_task_children() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("task_id", _ID, sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("prev_sha256", sa.String(64), nullable=True),
        sa.Column("node_id", _ID, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("progress", sa.Double, nullable=False),
        *_times("runtime_s", "kept_s", "created_at"),
    )
    op.create_table(
        "work",
        sa.Column("task_id", _ID, sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("job_id", _ID, nullable=False),
        sa.Column("node_id", _ID, nullable=False),
        sa.Column("price_micro_per_hour", sa.BigInteger, nullable=False),
        *_times("kept_s", "lost_s"),
    )
    op.create_index("ix_work_job_id", "work", ["job_id"])
    op.create_table(
        "logs",
        # SQLite only auto-numbers an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit sequence.
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("job_id", _ID, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("stream", sa.String, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        *_times("at"),
    )
    op.create_index("ix_logs_job_id_seq", "logs", ["job_id", "seq"])
    op.create_index("ix_logs_task_id_attempt_seq", "logs", ["task_id", "attempt", "seq"])


def downgrade() -> None:
    for index, table in [
        ("ix_logs_task_id_attempt_seq", "logs"),
        ("ix_logs_job_id_seq", "logs"),
        ("ix_work_job_id", "work"),
        ("ix_tasks_node_id", "tasks"),
        ("ix_tasks_state_lease_expires_at", "tasks"),
        ("ix_tasks_job_id", "tasks"),
        ("ix_tasks_state_queued_at", "tasks"),
        ("ix_jobs_owner_created_at", "jobs"),
        ("ix_nonces_expires_at", "nonces"),
    ]:
        op.drop_index(index, table_name=table)
    for table in ["logs", "work", "checkpoints", "tasks", "jobs", "heartbeat_minutes", "nodes"]:
        op.drop_table(table)
    op.drop_table("nonces")
    op.drop_table("actors")
