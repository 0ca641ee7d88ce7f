"""Serving and monitoring: deployments (candidate routing), the prediction log and feedback.

Revision ID: 0006_serving
Revises: 0005_registry
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_serving"
down_revision = "0005_registry"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column(
            "project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("candidate", sa.Integer, nullable=True),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("updated_by", sa.String(160), nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Double, nullable=False),
    )
    op.create_index("ix_predictions_model_ts", "predictions", ["project_id", "model", "ts"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("prediction_id", sa.String(32), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("by", sa.String(160), nullable=False),
    )
    op.create_index("ix_feedback_model_ts", "feedback", ["project_id", "model", "ts"])
    op.create_index("ix_feedback_prediction_id", "feedback", ["prediction_id"])


def downgrade() -> None:
    for table in ("feedback", "predictions", "deployments"):
        op.drop_table(table)
