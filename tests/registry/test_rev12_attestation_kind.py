"""An attestation's kind is stored in a 32-character column: a longer one is a clear refusal before anything
is written (PostgreSQL would otherwise fail the write with a driver error), on record like other bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.errors import UsageError


def test_an_attestation_kind_longer_than_its_column_is_refused(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(model / "model.safetensors"))
    (model / "config.json").write_text("{}", encoding="utf-8")
    registry.register(platform, ctx, model, "ak")

    with pytest.raises(UsageError, match="short name"):
        registry.attest(platform, ctx, "ak@1", "k" * 33, {}, passed=True)
    assert registry.attestations(platform, ctx, "ak@1") == []
    with platform.db.read() as s:
        last = s.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).one()
    assert (last.resource, last.outcome) == ("model:ak@1", "refused")
    assert registry.attest(platform, ctx, "ak@1", "k" * 32, {}, passed=True) > 0
