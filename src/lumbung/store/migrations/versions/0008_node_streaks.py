"""Nodes' streaks of valid results: one row per (node, workload) with its count.

Adaptive replication (as in BOINC) checks every result of a node with fewer than a threshold of
consecutive valid results in a kind of work, and a trusted node's only now and then; a result a
quorum finds invalid sets the count back to 0. The count is moved in the database by an upsert,
so that several hubs sharing it never lose an increment. Nodes judged before this revision start
with no record, as a node never judged does: their results are checked until they earn one.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_streaks",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("workload", sa.String(64), primary_key=True),
        sa.Column("valid_streak", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("node_streaks")
