"""Alembic environment: always run programmatically with a connection from MetadataStore.migrate()."""

from __future__ import annotations

from alembic import context

from modelyard.core._models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - we never run alembic's CLI against the package
    raise RuntimeError("modelyard migrations run through MetadataStore.migrate(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch mode for ALTER
)
with context.begin_transaction():
    context.run_migrations()
