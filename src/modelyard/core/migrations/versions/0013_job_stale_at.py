"""Jobs: when a RUNNING job counts as lost, set by its worker with each heartbeat (the worker's own
timeout). The reaper used its own timeout, so a reader set to a shorter one than a worker's re-queued that
worker's live jobs, which then ran twice.

Revision ID: 0013_job_stale_at
Revises: 0012_signed_aliases
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_job_stale_at"
down_revision = "0012_signed_aliases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("stale_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("stale_at")
