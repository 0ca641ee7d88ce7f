"""Bad input to end_run and use_dataset is refused *and audited*, as params, tags and artifacts are: the
log holds every attempted mutation. Both raised before the role was checked and left no record."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.errors import NotFoundError, UsageError
from modelyard.tracking import Client, _store


def _refused(platform: Platform) -> list[tuple[str, str, str]]:
    with platform.db.read() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "refused")).all()
    return [(r.actor, r.action, r.resource) for r in rows]


def test_bad_end_and_bad_dataset_input_are_audited(platform: Platform, client: Client) -> None:
    run = client.start_run("refusals", capture=False)
    me = client.ctx.user
    with pytest.raises(UsageError, match="not a final status"):
        _store.end_run(platform, client.ctx, run.id, "DONE-ISH")
    with pytest.raises(UsageError, match="reason must be a string"):
        _store.end_run(platform, client.ctx, run.id, "FAILED", 5)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="not a dataset version"):
        _store.use_dataset(platform, client.ctx, run.id, "no such/spec")
    assert _refused(platform) == [(me, "run.write", f"run:{run.id}")] * 3
    run.end()


def test_logging_artifacts_to_a_run_that_is_not_there_is_audited(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    (tmp_path / "a.txt").write_text("a", encoding="utf-8")
    ghost = "0" * 32
    with pytest.raises(NotFoundError):
        _store.log_artifacts(platform, ctx, ghost, [(tmp_path / "a.txt", "a.txt")])
    assert _refused(platform) == [(ctx.user, "run.write", f"run:{ghost}")]
