"""`yard models show` prints a gate verdict only from an attestation whose signature checks."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest
from sqlalchemy import text

from modelyard import registry
from modelyard.core import Platform, Role
from modelyard.testing import Yard, actor

pytestmark = pytest.mark.slow

VERDICT = re.compile(r"gates\s+(passed|FAILED) \(")


def test_show_never_prints_a_verdict_from_a_tampered_attestation(
    yard: Yard, platform: Platform, model_dir: Path
) -> None:
    name = f"m-{secrets.token_hex(3)}"
    author = platform.context()
    approver = actor(platform, author, f"approver-{secrets.token_hex(3)}", Role.APPROVER)
    registry.register(platform, author, model_dir, name)
    older = registry.attest(platform, approver, f"{name}@1", "gates", {"checks": []}, passed=True)
    failed = registry.attest(platform, approver, f"{name}@1", "gates", {"checks": []}, passed=False)
    shown = yard("models", "show", f"{name}@1")
    assert shown.code == 0 and "FAILED" in shown.out and f"attestation {failed}" in shown.out

    with platform.db.write() as s:  # the failed run's body and column rewritten to say it passed
        body = s.execute(text("SELECT body FROM model_attestations WHERE id = :i"), {"i": failed}).scalar()
        forged = json.loads(body) | {"passed": True}
        s.execute(
            text("UPDATE model_attestations SET body = :b, passed = 1 WHERE id = :i"),
            {"b": json.dumps(forged, sort_keys=True, separators=(",", ":")), "i": failed},
        )
    shown = yard("models", "show", f"{name}@1")
    assert shown.code == 0, shown.err
    [line] = [x for x in shown.out.splitlines() if x.strip().startswith("gates")]
    assert not VERDICT.search(line) and f"attestation {failed} failed its signature check" in line
    as_json = yard("models", "show", f"{name}@1", "--json").json()["gates"]
    assert [(g["id"], g["verified"]) for g in as_json] == [(older, True), (failed, False)]
    assert "passed" not in as_json[1]  # a body that does not check is nobody's word

    with platform.db.write() as s:  # put back, then hide the failed run behind the older pass
        s.execute(
            text("UPDATE model_attestations SET body = :b, passed = 0, kind = 'notes' WHERE id = :i"),
            {"b": body, "i": failed},
        )
    shown = yard("models", "show", f"{name}@1")
    [line] = [x for x in shown.out.splitlines() if x.strip().startswith("gates")]
    assert not VERDICT.search(line) and f"attestation {failed} failed its signature check" in line
