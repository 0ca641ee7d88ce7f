"""A relative gate never compares a version with itself on the word of an alias record that does not check."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import select, text

from modelyard import registry
from modelyard.core import Platform, Role
from modelyard.core._models import AuditRecord
from modelyard.errors import IntegrityError
from modelyard.evaluation import check_gates, gate_runner, parse_policy
from modelyard.testing import actor

DATA = {"dataset": "norm@1", "file": "test.jsonl", "max_samples": 20}
DECODING = {"max_new_tokens": 24}
RELATIVE = parse_policy({"data": DATA, "decoding": DECODING, "metrics": ["rougeL >= production"]})
PLAIN = parse_policy({"data": DATA, "decoding": DECODING, "metrics": ["rougeL >= 0"]})


@pytest.mark.parametrize(
    "tamper",
    [
        "version_id = :v",  # repointed: its signed record still names version 1
        "version_id = :v, body = NULL, signature = NULL, key_id = NULL",  # repointed and unsigned
    ],
)
def test_production_repointed_at_the_candidate_is_no_reference_for_it(
    trained_platform: Platform, model_dir: Path, name: str, tamper: str
) -> None:
    p = trained_platform
    author = p.context()
    approver = actor(p, author, f"approver-{secrets.token_hex(3)}", Role.APPROVER)
    for _ in range(2):
        registry.register(p, author, model_dir, name)
    registry.promote(p, approver, f"{name}@1", "production", gates=gate_runner(PLAIN))
    with p.db.write() as s:
        model_id = s.execute(text("SELECT id FROM models WHERE name = :n"), {"n": name}).scalar()
        v2 = s.execute(
            text("SELECT id FROM model_versions WHERE model_id = :m AND version = 2"), {"m": model_id}
        ).scalar()
        s.execute(
            text(f"UPDATE model_aliases SET {tamper} WHERE model_id = :m AND alias = 'production'"),
            {"m": model_id, "v": v2},
        )
    with pytest.raises(IntegrityError, match=f"{name}@production"):
        check_gates(p, approver, f"{name}@2", RELATIVE, attest=False)
    with pytest.raises(IntegrityError, match=f"{name}@production"):
        check_gates(p, approver, f"{name}@2", RELATIVE)  # `yard gates check`: refused on record
    with p.db.read() as s:
        assert s.scalars(
            select(AuditRecord.outcome).where(AuditRecord.resource == f"model:{name}@2")
        ).all() == ["refused"]
    with pytest.raises(IntegrityError, match="without checks relative to 'production'"):
        registry.promote(p, approver, f"{name}@2", "production", gates=gate_runner(RELATIVE))
    with p.db.read() as s:
        outcomes = s.scalars(
            select(AuditRecord.outcome).where(
                AuditRecord.resource == f"model:{name}#production", AuditRecord.action == "model.approve"
            )
        ).all()
    assert outcomes == ["ok", "refused"]
    assert registry.attestations(p, author, f"{name}@2", kind="gates") == []  # no pass was signed
    # The way out: promote without the relative check (its absolute checks still run); then it compares.
    registry.promote(p, approver, f"{name}@2", "production", gates=gate_runner(PLAIN))
    assert registry.promote(p, approver, f"{name}@1", "production", gates=gate_runner(RELATIVE)).version == 1
