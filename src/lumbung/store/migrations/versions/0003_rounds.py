"""Training rounds: one row per round of a train job, one per worker's update to it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rounds",
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.Double, nullable=False),
        sa.Column("deadline_at", sa.Double, nullable=False),
        sa.Column("base_sha", sa.String(64), nullable=True),
        sa.Column("change_sha", sa.String(64), nullable=True),
        sa.Column("state_sha", sa.String(64), nullable=True),
        sa.Column("closed_at", sa.Double, nullable=True),
        sa.Column("participants", sa.Integer, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_rounds_state_deadline_at", "rounds", ["state", "deadline_at"])
    op.create_table(
        "round_updates",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("round_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.String(64), sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("inner_steps", sa.Integer, nullable=False),
        sa.Column("train_loss", sa.Double, nullable=False),
        sa.Column("base_val_loss", sa.Double, nullable=True),
        sa.Column("bytes_down", sa.BigInteger, nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("round_updates")
    op.drop_index("ix_rounds_state_deadline_at", table_name="rounds")
    op.drop_table("rounds")
