"""Serving: canary outcomes shared by every worker and replica of a model (one SLO window for all), keyed
by the generation that put the candidate in.

Revision ID: 0007_canary_window
Revises: 0006_serving
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_canary_window"
down_revision = "0006_serving"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deployments", sa.Column("candidate_generation", sa.Integer, nullable=True))
    op.execute("UPDATE deployments SET candidate_generation = generation WHERE candidate IS NOT NULL")
    op.create_table(
        "canary_outcomes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("server", sa.String(96), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latencies", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_canary_outcomes_model", "canary_outcomes", ["project_id", "model", "generation", "ts"]
    )


def downgrade() -> None:
    op.drop_index("ix_canary_outcomes_model", table_name="canary_outcomes")
    op.drop_table("canary_outcomes")
    with op.batch_alter_table("deployments") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("candidate_generation")
