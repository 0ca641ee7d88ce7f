"""Runs: when a RUNNING run counts as dead, set by its own process with each heartbeat (its own
timeout). The reaper used its own process's timeout, so a run whose process had raised the timeout for
long pauses was reaped by any command run with the default.

Revision ID: 0011_run_stale_at
Revises: 0010_job_cluster_uid
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_run_stale_at"
down_revision = "0010_job_cluster_uid"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("stale_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("stale_at")
