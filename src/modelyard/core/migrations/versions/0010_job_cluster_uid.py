"""Jobs: the UID of a job's Kubernetes Job. Names are reused (after a Job's TTL, by another installation
sharing the namespace); a UID never is, so a Job of the same name that is not ours is never taken for ours.

Revision ID: 0010_job_cluster_uid
Revises: 0009_condemned_objects
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_job_cluster_uid"
down_revision = "0009_condemned_objects"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cluster_uid", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cluster_uid")
