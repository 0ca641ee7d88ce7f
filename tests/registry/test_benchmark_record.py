"""A version's benchmark record is signed into its manifest: it must be JSON with finite numbers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform
from modelyard.core._models import AuditRecord, ModelVersion
from modelyard.errors import UsageError


@pytest.mark.parametrize(
    "benchmark",
    [{"p50_ms": float("nan")}, {"speedup": float("inf")}, {"at": object()}, "p50_ms=3", {"a": 1, 2: "b"}],
)
def test_a_benchmark_that_is_not_finite_json_is_refused(
    platform: Platform, tiny_model: Callable[..., Path], benchmark: object
) -> None:
    # NaN and infinities were signed into the manifest (which no strict JSON reader then reads), the others
    # were an unexpected TypeError or ValueError
    ctx = platform.context()
    model = tiny_model()
    with pytest.raises(UsageError, match="benchmark"):
        registry.register(platform, ctx, model, "b", benchmark=benchmark)  # type: ignore[arg-type]
    with platform.db.read() as s:
        assert s.scalars(select(ModelVersion)).all() == []
        outcomes = s.scalars(select(AuditRecord.outcome).where(AuditRecord.action == "model.register")).all()
    assert outcomes == ["refused"]
    info = registry.register(platform, ctx, model, "b", benchmark={"p50_ms": 1.5, "data": "d@1"})
    assert registry.read_manifest(platform, ctx, info.spec)[1]["benchmark"] == {"p50_ms": 1.5, "data": "d@1"}
