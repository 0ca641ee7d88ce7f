"""A passing gate attestation made by hand is refused to whoever made the version (four eyes). Given an
alias, the version checked must be the version attested: if the alias moves between the check and the
write (to the attester's own version), the attestation is refused, not stored on a version nobody checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import event

from modelyard import registry
from modelyard.core import Platform, Role
from modelyard.errors import UsageError
from modelyard.testing import actor


def _model(root: Path, value: float) -> Path:
    root.mkdir()
    save_file({"w": np.full(2, value, dtype=np.float32)}, str(root / "model.safetensors"))
    (root / "config.json").write_text("{}", encoding="utf-8")
    return root


def test_an_alias_moved_during_a_hand_attestation_is_refused(platform: Platform, tmp_path: Path) -> None:
    admin = platform.context()
    sci = actor(platform, admin, "sci", Role.SCIENTIST)
    ann = actor(platform, admin, "ann", Role.APPROVER)
    registry.register(platform, sci, _model(tmp_path / "a", 0.0), "ar")  # v1: someone else's
    registry.register(platform, ann, _model(tmp_path / "b", 1.0), "ar")  # v2: ann's own
    registry.set_alias(platform, ann, "ar@1", "staging")

    # The moment the attestation's signer is made (after four eyes was checked against ar@staging = 1, before
    # the write), staging moves to ann's own version: what a concurrent `yard models alias` would do.
    moved: list[int | None] = []

    def move(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if not moved and "FROM meta" in statement and "signing_key" in str(params):
            moved.append(None)  # once: set_alias makes a signer too
            moved[0] = registry.set_alias(platform, ann, "ar@2", "staging").version

    event.listen(platform.db.engine, "before_cursor_execute", move)
    try:
        with pytest.raises(UsageError, match="changed while"):
            registry.attest(platform, ann, "ar@staging", "gates", {"checks": []}, passed=True)
    finally:
        event.remove(platform.db.engine, "before_cursor_execute", move)
    assert moved == [2]
    assert registry.attestations(platform, admin, "ar@2") == []
    assert registry.attestations(platform, admin, "ar@1") == []
