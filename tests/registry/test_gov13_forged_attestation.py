"""The registry's one function that lists a version's attestations checks each one's signature: an
attestation whose body or columns were edited in the database is listed as unverified, with no body anyone
could take for a valid one, and an edited ``kind`` column does not hide it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from modelyard import registry
from modelyard.core import Platform


def _forge_passed(platform: Platform, attestation: int) -> str:
    """Rewrite a failed attestation's body and column to say it passed; returns the signed body."""
    with platform.db.write() as s:
        body = s.execute(
            text("SELECT body FROM model_attestations WHERE id = :i"), {"i": attestation}
        ).scalar()
        forged = json.loads(body) | {"passed": True}
        s.execute(
            text("UPDATE model_attestations SET body = :b, passed = 1 WHERE id = :i"),
            {"b": json.dumps(forged, sort_keys=True, separators=(",", ":")), "i": attestation},
        )
    return str(body)


def test_an_edited_attestation_is_never_listed_as_a_valid_one(
    platform: Platform, tiny_model: Callable[..., Path]
) -> None:
    ctx = platform.context()
    registry.register(platform, ctx, tiny_model(), "fa")
    older = registry.attest(platform, ctx, "fa@1", "gates", {"checks": []}, passed=False)
    failed = registry.attest(platform, ctx, "fa@1", "gates", {"checks": ["rougeL"]}, passed=False)
    listed = registry.attestations(platform, ctx, "fa@1", kind="gates")
    assert [(a["id"], a["verified"], a["passed"]) for a in listed] == [
        (older, True, False),
        (failed, True, False),
    ]
    assert listed[1]["result"] == {"checks": ["rougeL"]} and listed[1]["subject"] == "model:fa@1"

    body = _forge_passed(platform, failed)
    for kind in ("gates", None):
        *_, last = registry.attestations(platform, ctx, "fa@1", kind=kind)
        assert last["id"] == failed and last["verified"] is False and "signature" in last["problem"]
        assert set(last) == {"id", "verified", "problem"}  # nothing of the forged body

    with platform.db.write() as s:  # put back, then hide the failed run behind the older one by its kind
        s.execute(
            text("UPDATE model_attestations SET body = :b, passed = 0, kind = 'notes' WHERE id = :i"),
            {"b": body, "i": failed},
        )
    *_, last = registry.attestations(platform, ctx, "fa@1", kind="gates")
    assert (last["id"], last["verified"]) == (failed, False)
    assert "the record says kind='notes'" in last["problem"]
    assert set(last) == {"id", "verified", "problem"}


def test_a_card_shows_no_verdict_from_an_attestation_edited_after_its_verification(
    platform: Platform, tiny_model: Callable[..., Path]
) -> None:
    ctx = platform.context()
    registry.register(platform, ctx, tiny_model(), "fc")
    failed = registry.attest(platform, ctx, "fc@1", "gates", {"checks": []}, passed=False)
    assert "Latest gate run: FAILED" in registry.model_card(platform, ctx, "fc@1").markdown()

    # The card verifies the version (its attestations read first), then lists the gate runs: in between,
    # the failed run is rewritten to say it passed.
    reads: list[str] = []

    def forge(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SELECT model_attestations.id"):  # a listing (not the forger's own read)
            reads.append(statement)
            if len(reads) == 1:  # verify's read, done: what the card lists next is the forgery
                _forge_passed(platform, failed)

    event.listen(platform.db.engine, "after_cursor_execute", forge)
    try:
        card = registry.model_card(platform, ctx, "fc@1").markdown()
    finally:
        event.remove(platform.db.engine, "after_cursor_execute", forge)
    assert len(reads) == 2
    assert "Latest gate run" not in card and f"Attestation {failed} failed its signature check" in card
