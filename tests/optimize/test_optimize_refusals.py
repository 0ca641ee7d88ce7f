"""A refused `optimize` (bad settings, a model that is not there) is on record like other refused
mutations: it raised before the role was checked and left no audit record."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.errors import NotFoundError, UsageError
from modelyard.optimize._pipeline import optimize


def test_refused_optimize_requests_are_audited(platform: Platform) -> None:
    ctx = platform.context()
    with pytest.raises(UsageError, match="between 0 and 1"):
        optimize(platform, ctx, "opt@1", prune=1.5)
    with pytest.raises(UsageError, match="max_samples"):
        optimize(platform, ctx, "opt@1", max_samples=0)
    with pytest.raises(NotFoundError):
        optimize(platform, ctx, "nothing@1")
    with platform.db.read() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "refused")).all()
    assert [(r.actor, r.action, r.resource) for r in rows] == [
        (ctx.user, "model.register", "model:opt@1"),
        (ctx.user, "model.register", "model:opt@1"),
        (ctx.user, "model.register", "model:nothing@1"),
    ]
