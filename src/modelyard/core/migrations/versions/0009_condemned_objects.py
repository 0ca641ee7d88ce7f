"""Garbage collection: objects a collection condemned (no blob row named them). Committed before they are
deleted, so a slow writer that uploaded one can never claim it afterwards, whatever happens to the
collector's session while it deletes.

Revision ID: 0009_condemned_objects
Revises: 0008_job_cluster
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_condemned_objects"
down_revision = "0008_job_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "condemned_objects",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("condemned_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("condemned_objects")
