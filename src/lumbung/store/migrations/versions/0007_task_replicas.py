"""Tasks carry a replica number, a verdict and an execution class; (job_id, index, replica) is
unique.

A replicated ``run`` task runs as several copies on distinct nodes, whose results a quorum
compares: the copies share the job and index and differ in ``replica``, and each gets the quorum's
``verdict`` on its result ("agreed", "wrong", "unverified"). The unique index keeps two copies
from taking one number (two hubs adding a replica at once) and finds a task's replicas. A
result's ``execution_class`` is the digest of the class its node committed to.

Every task stored before this revision is the only copy of its index: replica 0, verdict NULL,
no execution class (no node committed to one then).
Indexes were already unique within a job, so the new index holds on existing rows.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("replica", sa.Integer, nullable=False, server_default="0"))
    op.add_column("tasks", sa.Column("verdict", sa.String(16), nullable=True))
    op.add_column("tasks", sa.Column("execution_class", sa.String(64), nullable=True))
    op.create_index(
        "ux_tasks_job_id_index_replica", "tasks", ["job_id", "index", "replica"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_tasks_job_id_index_replica", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("execution_class")
        batch.drop_column("verdict")
        batch.drop_column("replica")
