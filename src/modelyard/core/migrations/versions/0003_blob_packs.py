"""Blob packs: a blob may live at a byte range of a shared pack object.

Revision ID: 0003_blob_packs
Revises: 0002_tracking_data_lineage
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_blob_packs"
down_revision = "0002_tracking_data_lineage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("pack_offset", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("pack_length", sa.BigInteger, nullable=True))
    # discard() asks which pack objects any row refers to: without an index that is a full scan.
    op.create_index("ix_blobs_object_name", "blobs", ["object_name"])


def downgrade() -> None:
    op.drop_index("ix_blobs_object_name", "blobs")
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("pack_length")
        batch.drop_column("pack_offset")
