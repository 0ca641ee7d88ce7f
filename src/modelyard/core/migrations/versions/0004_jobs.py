"""Job queue: jobs (claimed by workers with FOR UPDATE SKIP LOCKED) and their log chunks.

Revision ID: 0004_jobs
Revises: 0003_blob_packs
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_jobs"
down_revision = "0003_blob_packs"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("recipe", sa.Text, nullable=False),
        sa.Column("recipe_name", sa.String(256), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("external_id", sa.String(320), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("cpus", sa.Double, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("memory", sa.BigInteger, nullable=False),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("worker", sa.String(256), nullable=True),
        sa.Column("submitted_at", _TS, nullable=False),
        sa.Column("submitted_by", sa.String(160), nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("heartbeat_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    # The claim query: QUEUED jobs of one project by priority, then age.
    op.create_index("ix_jobs_queue", "jobs", ["project_id", "status", "priority", "id"])
    op.create_table(
        "job_logs",
        sa.Column("id", _BIGINT, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_job_logs_job_id", "job_logs", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_logs_job_id", "job_logs")
    op.drop_table("job_logs")
    op.drop_index("ix_jobs_queue", "jobs")
    op.drop_table("jobs")
