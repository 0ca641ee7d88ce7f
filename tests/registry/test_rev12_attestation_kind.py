"""An attestation's kind is stored in a 32-character column: a longer one is a clear refusal before anything
is written (PostgreSQL would otherwise fail the write with a driver error), on record like other bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.errors import UsageError


def test_an_attestation_kind_longer_than_its_column_is_refused(
    platform: Platform, tiny_model: Callable[..., Path]
) -> None:
    ctx = platform.context()
    model = tiny_model()
    registry.register(platform, ctx, model, "ak")

    with pytest.raises(UsageError, match="short name"):
        registry.attest(platform, ctx, "ak@1", "k" * 33, {}, passed=True)
    assert registry.attestations(platform, ctx, "ak@1") == []
    with platform.db.read() as s:
        last = s.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).one()
    assert (last.resource, last.outcome) == ("model:ak@1", "refused")
    assert registry.attest(platform, ctx, "ak@1", "k" * 32, {}, passed=True) > 0
