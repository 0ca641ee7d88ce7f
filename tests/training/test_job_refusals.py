"""Cancelling or attaching a run to a job that is not there (or a malformed run id) is refused *and
audited*, as mutations are: both looked the job up outside ``mutate`` and left no record."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.errors import NotFoundError, UsageError
from modelyard.training import _jobs


def test_refused_cancel_and_attach_are_audited(platform: Platform) -> None:
    ctx = platform.context()
    with pytest.raises(NotFoundError, match="job 999 not found"):
        _jobs.cancel_job(platform, ctx, 999)
    with pytest.raises(NotFoundError, match="job 999 not found"):
        _jobs.attach_run(platform, ctx, 999, "a" * 32)
    with pytest.raises(UsageError, match="not a run id"):
        _jobs.attach_run(platform, ctx, 999, "not-a-run")
    with platform.db.read() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "refused")).all()
    job = _jobs.job_ref(999)
    assert [(r.actor, r.action, r.resource) for r in rows] == [
        (ctx.user, "job.cancel", job),
        (ctx.user, "job.write", job),
        (ctx.user, "job.write", job),
    ]
