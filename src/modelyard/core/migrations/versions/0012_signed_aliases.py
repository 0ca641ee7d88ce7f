"""Registry: aliases are signed. The pointer (project, model, alias, version, manifest digest) and the
versions a rollback returns to are canonical JSON signed with the installation's key, checked whenever the
alias is resolved: someone able to write the database could otherwise point ``production`` at a version
that never passed its gates. Rows made before this revision have no signature and are refused until the
alias is pointed again (``yard models alias`` / ``yard models promote``).

Revision ID: 0012_signed_aliases
Revises: 0011_run_stale_at
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_signed_aliases"
down_revision = "0011_run_stale_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_aliases", sa.Column("body", sa.Text, nullable=True))
    op.add_column("model_aliases", sa.Column("signature", sa.String(128), nullable=True))
    op.add_column("model_aliases", sa.Column("key_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_aliases") as batch:
        for column in ("key_id", "signature", "body"):
            batch.drop_column(column)
