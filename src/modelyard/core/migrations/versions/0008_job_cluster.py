"""Jobs: which Kubernetes API server a job was submitted to, so that a reader whose kubeconfig reaches
another cluster never takes a Job missing there for one that is gone.

Revision ID: 0008_job_cluster
Revises: 0007_canary_window
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_job_cluster"
down_revision = "0007_canary_window"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cluster", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cluster")
