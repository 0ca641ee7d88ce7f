"""A gate check that is to attest (record its signed result on the version) and cannot run (its data is
missing) is a refused attestation, audited like other refusals; it used to leave no record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.errors import NotFoundError
from modelyard.evaluation import check_gates, parse_policy


def test_a_gate_check_without_its_data_is_a_refusal_on_record(
    platform: Platform, tiny_model: Callable[..., Path]
) -> None:
    ctx = platform.context()
    model = tiny_model()
    info = registry.register(platform, ctx, model, "gate-refusal")
    policy = parse_policy({"data": {"dataset": "no-such-data@1"}, "metrics": ["rougeL >= 0"]})
    with pytest.raises(NotFoundError):
        check_gates(platform, ctx, info.spec, policy)
    with platform.db.read() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "refused")).all()
    assert [(r.actor, r.action, r.resource) for r in rows] == [
        (ctx.user, "model.register", "model:gate-refusal@1")
    ]
