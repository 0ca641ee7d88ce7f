"""A four-eyes refusal (the author approving their own version) is an authorization denial: it is on
record with outcome ``denied``, as a missing role is, not ``refused`` as bad input is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform, Role
from modelyard.core._models import AuditRecord
from modelyard.errors import PermissionDeniedError
from modelyard.testing import actor


def _outcomes(platform: Platform, resource: str) -> list[tuple[str, str, str]]:
    with platform.db.read() as s:
        rows = s.execute(
            select(AuditRecord.actor, AuditRecord.action, AuditRecord.outcome).where(
                AuditRecord.resource == resource
            )
        ).all()
    return [(a, b, c) for a, b, c in rows]


def test_four_eyes_refusals_are_recorded_as_denied_like_a_missing_role(
    platform: Platform, tiny_model: Callable[..., Path]
) -> None:
    from modelyard.serving import deploy

    author = platform.context()
    engineer = actor(platform, author, "eng", Role.ENGINEER)
    model = tiny_model()
    registry.register(platform, author, model, "fe")

    def no_gates(*_: object) -> tuple[bool, str]:
        raise AssertionError("four eyes is checked before the gates run")

    with pytest.raises(PermissionDeniedError, match="approver"):  # the role: denied
        registry.promote(platform, engineer, "fe@1", "production", gates=no_gates)
    with pytest.raises(PermissionDeniedError, match="four eyes"):
        registry.promote(platform, author, "fe@1", "production", gates=no_gates)
    assert _outcomes(platform, "model:fe#production") == [
        ("eng", "model.approve", "denied"),
        (author.user, "model.approve", "denied"),
    ]

    with pytest.raises(PermissionDeniedError, match="four eyes"):
        registry.attest(platform, author, "fe@1", "gates", {"checks": []}, passed=True)
    assert _outcomes(platform, "model:fe@1")[-1] == (author.user, "model.approve", "denied")

    with pytest.raises(PermissionDeniedError, match="four eyes"):
        deploy(platform, author, "fe", version=1, mode="canary", weight=100)
    assert _outcomes(platform, "deployment:fe")[-1] == (author.user, "model.deploy", "denied")
