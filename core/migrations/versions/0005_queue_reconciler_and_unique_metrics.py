"""jobs.enqueued_at (queue reconciler) and one metric row per (job, step, split, name)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    # rows a resumed attempt stored twice: keep the newest of each
    op.execute(
        "DELETE FROM metrics WHERE id NOT IN (SELECT max(id) FROM metrics "
        "GROUP BY job_id, step, split, name)"
    )
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            "uq_metrics_job_step_split_name", ["job_id", "step", "split", "name"]
        )


def downgrade() -> None:
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_constraint("uq_metrics_job_step_split_name", type_="unique")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("enqueued_at")
