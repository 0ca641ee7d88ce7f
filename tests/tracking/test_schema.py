"""The tracking tables the migration creates are the ones the ORM models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from modelyard.core import Platform
from modelyard.core._models import Base

TRACKING = {
    "experiments",
    "runs",
    "run_params",
    "run_tags",
    "run_metrics",
    "run_latest_metrics",
    "metric_batches",
    "run_artifacts",
}


def _table(diff: object) -> str | None:
    op = diff[0] if isinstance(diff, list) else diff
    for part in op[1:] if isinstance(op, tuple) else ():
        name = getattr(part, "name", None) if not isinstance(part, str) else None
        table = getattr(part, "table", None)
        if table is not None:
            return str(table.name)
        if name in TRACKING:
            return str(name)
    return None


def test_migration_matches_models_for_tracking_tables(platform: Platform) -> None:
    with platform.db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    ours = [d for d in diffs if _table(d) in TRACKING]
    assert ours == []
