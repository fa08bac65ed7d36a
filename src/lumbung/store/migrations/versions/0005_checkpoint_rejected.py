"""Checkpoint links a later node could not restore are marked rejected, with the reason.

Before the hub measured time itself it stored whatever time a node claimed: an infinite (or, on
PostgreSQL, NaN) runtime froze the job's escrow, since settlement could not turn it into
milliseconds. Such a claim was never true, so it is set to nothing kept (PostgreSQL orders NaN
above every number, so ``> 1e300`` finds both; SQLite cannot store NaN in these columns).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Far above any real time (a job runs at most a week), far below infinity.
_IMPOSSIBLE_S = 1e300
_TIMES = {"work": ("kept_s", "lost_s"), "checkpoints": ("runtime_s", "kept_s")}


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column("rejected", sa.Text, nullable=True))
    for name, columns in _TIMES.items():
        table = sa.table(name, *(sa.column(c, sa.Double) for c in columns))
        for column in columns:
            c = table.c[column]
            op.execute(
                table.update()
                .where(sa.or_(c > _IMPOSSIBLE_S, c < -_IMPOSSIBLE_S))
                .values({column: 0.0})
            )


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("rejected")
