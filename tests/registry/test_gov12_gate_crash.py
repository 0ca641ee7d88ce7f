"""A promotion whose gates crash with an error that is not ours is on record as a failed attempt."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform, Role
from modelyard.core._models import AuditRecord
from modelyard.evaluation import check_gates, gate_runner, parse_policy
from modelyard.testing import actor


def test_a_gate_run_crashing_in_torch_leaves_an_audited_promotion_attempt(
    trained_platform: Platform, model_dir: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    p = trained_platform
    approver = actor(p, p.context(), f"approver-{secrets.token_hex(3)}", Role.APPROVER)
    registry.register(p, p.context(), model_dir, name)
    policy = parse_policy({"data": {"dataset": "norm@1", "file": "test.jsonl"}, "metrics": ["rougeL >= 0"]})

    def broken(n: int) -> None:
        raise RuntimeError("set_num_threads: cannot set number of intraop threads")

    monkeypatch.setattr(torch, "set_num_threads", broken)  # loading the version for its gates fails
    with pytest.raises(RuntimeError, match="intraop"):
        registry.promote(p, approver, f"{name}@1", "production", gates=gate_runner(policy))
    assert audited(p, f"model:{name}#production") == [
        ("model.approve", "error", approver.user, "RuntimeError")
    ]
    assert registry.history(p, p.context(), name) == []
    # `yard gates check` stores an attestation: its failed attempt is on record too (the promotion's was)
    gates_check = [("model.register", "error", approver.user, "RuntimeError")]
    assert audited(p, f"model:{name}@1") == gates_check
    with pytest.raises(RuntimeError, match="intraop"):
        check_gates(p, approver, f"{name}@1", policy)
    assert audited(p, f"model:{name}@1") == gates_check * 2
    assert registry.attestations(p, approver, f"{name}@1") == []


def audited(p: Platform, resource: str) -> list[tuple[str, str, str, str]]:
    """(action, outcome, actor, error type) of the records about ``resource``."""
    with p.db.read() as s:
        rows = s.execute(
            select(AuditRecord.action, AuditRecord.outcome, AuditRecord.actor, AuditRecord.detail).where(
                AuditRecord.resource == resource
            )
        ).all()
    return [(a, o, who, json.loads(detail).get("error", "")) for a, o, who, detail in rows]
