"""Rounds record the updates screening left out; round updates record when they were reported.

A closed round names each update it did not aggregate and why (``screened``, a JSON object of task
id to reason). An update's ``runtime_s`` is the seconds into its attempt, by the hub's clock, when
it arrived: the work it keeps once screening lets it into the round, so an update left out is not
paid. Rounds closed before this revision screened nothing and paid on arrival: ``{}`` and 0.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rounds", sa.Column("screened", sa.Text, nullable=False, server_default="{}"))
    op.add_column(
        "round_updates",
        sa.Column("runtime_s", sa.Double, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("round_updates") as batch:
        batch.drop_column("runtime_s")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("screened")
