"""A passing gate attestation made by hand is refused to whoever made the version (four eyes). Given an
alias, the version checked must be the version attested: if the alias moves between the check and the
write (to the attester's own version), the attestation is refused, not stored on a version nobody checked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from modelyard import registry
from modelyard.core import Platform, Role
from modelyard.errors import UsageError
from modelyard.testing import actor


def test_an_alias_moved_during_a_hand_attestation_is_refused(
    platform: Platform, tiny_model: Callable[..., Path]
) -> None:
    admin = platform.context()
    sci = actor(platform, admin, "sci", Role.SCIENTIST)
    ann = actor(platform, admin, "ann", Role.APPROVER)
    registry.register(platform, sci, tiny_model(0.0), "ar")  # v1: someone else's
    registry.register(platform, ann, tiny_model(1.0), "ar")  # v2: ann's own
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
