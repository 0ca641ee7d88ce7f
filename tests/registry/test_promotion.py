"""Aliases, gated four-eyes promotion, rollback and alias history, with the real gates on a trained model.

These tests share the session's home (it holds the evaluation data ``norm@1``); each uses its own model
name and its own people."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from modelyard import registry
from modelyard.core import Context, Platform, Role
from modelyard.core._models import AuditRecord
from modelyard.errors import (
    GateFailedError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    UsageError,
    ValidationError,
)
from modelyard.evaluation import GatePolicy, check_gates, gate_runner, parse_policy
from modelyard.testing import TrainedModel

DATA = {"dataset": "norm@1", "file": "test.jsonl", "group_field": "locale", "max_samples": 60}


def policy(**checks: Any) -> GatePolicy:
    return parse_policy({"data": DATA, "decoding": {"max_new_tokens": 32}, **checks})


PASSING = policy(metrics=["rougeL >= 0.0", "bleu >= 0.0"], size={"max_mb": 100})


def person(platform: Platform, role: Role) -> Context:
    from modelyard.testing import actor

    return actor(platform, platform.context(), f"{role}-{secrets.token_hex(3)}", role)


def refusals(platform: Platform, resource: str) -> list[tuple[str, str]]:
    with platform.db.read() as s:
        rows = s.execute(
            select(AuditRecord.action, AuditRecord.outcome).where(AuditRecord.resource == resource)
        ).all()
    return [(a, o) for a, o in rows if o in ("refused", "denied")]


def test_promotion_needs_gates_and_a_second_person_and_rollback_walks_the_history(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    p = trained_platform
    author = p.context()
    approver, engineer, scientist = (
        person(p, Role.APPROVER),
        person(p, Role.ENGINEER),
        person(p, Role.SCIENTIST),
    )
    for _ in range(3):
        registry.register(p, author, model_dir, name)
    resource = f"model:{name}#production"

    with pytest.raises(PermissionDeniedError, match="four eyes"):
        registry.promote(p, author, f"{name}@1", "production", gates=gate_runner(PASSING))
    with pytest.raises(PermissionDeniedError, match="approver"):
        registry.promote(p, engineer, f"{name}@1", "production", gates=gate_runner(PASSING))
    with pytest.raises(UsageError, match="gate policy"):
        registry.promote(p, approver, f"{name}@1", "production")
    with pytest.raises(NotFoundError):
        registry.promote(p, approver, f"{name}@9", "production", gates=gate_runner(PASSING))
    assert len(refusals(p, resource)) == 4  # every refused attempt is on record, a missing version's too
    assert registry.history(p, author, name) == []

    for v in (1, 2, 3):
        change = registry.promote(
            p, approver, f"{name}@{v}", "production", gates=gate_runner(PASSING), reason=f"r{v}"
        )
        assert (change.version, change.previous) == (v, v - 1 if v > 1 else None)
    assert registry.show(p, author, f"{name}@production").version == 3
    gates = registry.attestations(p, author, f"{name}@3", kind="gates")
    assert gates[-1]["passed"] is True and gates[-1]["created_by"] == approver.user
    assert registry.verify(p, author, f"{name}@3").attestations == 1

    with pytest.raises(PermissionDeniedError):
        registry.rollback(p, scientist, name, "production")
    assert registry.rollback(p, engineer, name, "production", reason="bad canary").version == 2
    assert registry.rollback(p, engineer, name, "production").version == 1
    with pytest.raises(UsageError, match="no earlier version"):
        registry.rollback(p, engineer, name, "production")
    assert registry.show(p, author, f"{name}@production").version == 1

    events = [
        (e.action, e.version, e.previous, e.by) for e in registry.history(p, author, name, "production")
    ]
    assert events == [
        ("promote", 1, None, approver.user),
        ("promote", 2, 1, approver.user),
        ("promote", 3, 2, approver.user),
        ("rollback", 2, 3, engineer.user),
        ("rollback", 1, 2, engineer.user),
    ]
    # Promoting again after rollbacks pushes onto what is left: a rollback now returns to 1.
    registry.promote(p, approver, f"{name}@3", "production", gates=gate_runner(PASSING))
    assert registry.rollback(p, engineer, name, "production").version == 1
    with p.db.read() as s:
        actions = s.execute(
            select(AuditRecord.action, AuditRecord.outcome).where(AuditRecord.resource == resource)
        ).all()
    assert actions.count(("model.deploy", "ok")) == 3 and actions.count(("model.approve", "ok")) == 4


def test_a_promotion_whose_reference_moved_while_its_gates_ran_is_refused(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    # Relative gates compare with what production points at when they run; a promotion that lands
    # meanwhile must not be silently replaced by a version that was never compared with it.
    p = trained_platform
    author = p.context()
    first, second = person(p, Role.APPROVER), person(p, Role.APPROVER)
    for _ in range(3):
        registry.register(p, author, model_dir, name)

    def quick(platform: Platform, ctx: Context, spec: str) -> tuple[bool, str]:
        registry.attest(platform, ctx, spec, "gates", {"checks": []}, passed=True)
        return True, ""

    def racing(platform: Platform, ctx: Context, spec: str) -> tuple[bool, str]:
        registry.promote(p, second, f"{name}@2", "production", gates=quick)  # lands during these gates
        return quick(platform, ctx, spec)

    registry.promote(p, first, f"{name}@1", "production", gates=quick)
    with pytest.raises(GateFailedError, match=f"{name}@production moved while the gates of {name}@3 ran"):
        registry.promote(p, first, f"{name}@3", "production", gates=racing)
    assert registry.show(p, author, f"{name}@production").version == 2
    assert ("model.approve", "refused") in refusals(p, f"model:{name}#production")
    registry.promote(p, first, f"{name}@3", "production", gates=quick)  # gated again: it goes through
    assert registry.show(p, author, f"{name}@production").version == 3


def test_an_unsigned_production_from_before_signed_aliases_is_signed_again_by_promoting_its_version(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    # A home upgraded to signed aliases holds production unsigned, refused until promoted again. Its record
    # is trusted for nothing, not even to name the version being gated: a relative gate ("production -
    # 0.01") is refused, whichever version it gates, rather than compare that version with itself (a row
    # repointed and unsigned in the database would wave it through). Without it the promotion signs it.
    p = trained_platform
    author, approver = p.context(), person(p, Role.APPROVER)
    for _ in range(2):
        registry.register(p, author, model_dir, name)
    relative = gate_runner(policy(metrics=["rougeL >= production - 0.01"]))
    registry.promote(p, approver, f"{name}@1", "production", gates=gate_runner(PASSING))
    with p.db.write() as s:  # as an upgraded home holds it
        s.execute(
            text(
                "UPDATE model_aliases SET body = NULL, signature = NULL, key_id = NULL "
                "WHERE model_id = (SELECT id FROM models WHERE name = :n)"
            ),
            {"n": name},
        )
    for version in (2, 1):
        with pytest.raises(IntegrityError, match=r"not signed.*without checks relative to 'production'"):
            registry.promote(p, approver, f"{name}@{version}", "production", gates=relative)
    assert registry.promote(p, approver, f"{name}@1", "production", gates=gate_runner(PASSING)).version == 1
    assert registry.show(p, author, f"{name}@production").version == 1
    assert registry.promote(p, approver, f"{name}@2", "production", gates=relative).version == 2


def test_a_gate_result_made_by_hand_takes_an_approver(
    trained_platform: Platform, model_dir: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = trained_platform
    author, scientist, viewer = p.context(), person(p, Role.SCIENTIST), person(p, Role.VIEWER)
    registry.register(p, author, model_dir, name)
    with pytest.raises(PermissionDeniedError):  # a signed "passed" with made-up numbers
        registry.attest(p, scientist, f"{name}@1", "gates", {"checks": []}, passed=True)
    assert registry.attestations(p, author, f"{name}@1", kind="gates") == []
    registry.attest(p, scientist, f"{name}@1", "review", {"ok": True}, passed=True)  # other kinds: scientist

    import modelyard.evaluation._gates as gates_module

    monkeypatch.setattr(gates_module, "_eval_set", None)  # a viewer is refused before any evaluation
    with pytest.raises(PermissionDeniedError):
        check_gates(p, viewer, f"{name}@1", PASSING)


def test_who_trained_a_version_cannot_approve_it_either(
    trained_platform: Platform, trained: TrainedModel, name: str
) -> None:
    # An approver must not get their own run approved by having a scientist register it (helper-17).
    from modelyard.serving import deploy

    p = trained_platform
    trainer, scientist = p.context(), person(p, Role.SCIENTIST)  # the session's run is the OS user's
    registry.register(p, scientist, trained.run_id, name)
    with pytest.raises(PermissionDeniedError, match=f"trained {name}@1 and cannot also approve it"):
        registry.promote(p, trainer, f"{name}@1", "production", gates=gate_runner(PASSING))
    # nor vouch by hand that it passed its gates (a second approver's deployment would rest on it)
    with pytest.raises(PermissionDeniedError, match=f"trained {name}@1 and cannot also attest"):
        registry.attest(p, trainer, f"{name}@1", "gates", {"checks": []}, passed=True)
    assert ("model.approve", "denied") in refusals(p, f"model:{name}@1")  # four eyes, as a role is
    assert registry.attestations(p, trainer, f"{name}@1", kind="gates") == []
    registry.attest(p, trainer, f"{name}@1", "gates", {"checks": []}, passed=False)  # a failure is no favour
    registry.attest(p, person(p, Role.APPROVER), f"{name}@1", "gates", {"checks": []}, passed=True)
    with pytest.raises(PermissionDeniedError, match="four eyes"):  # nor give it most of the traffic
        deploy(p, trainer, name, version=1, mode="canary", weight=100)


def test_who_trained_the_parent_of_a_derived_version_cannot_approve_it(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path, name: str
) -> None:
    # An INT8 variant someone else optimised holds the weights its parent's run trained: its trainer
    # approving it would be approving their own model.
    from modelyard.serving import deploy

    p = trained_platform
    trainer, registrar, other = p.context(), person(p, Role.APPROVER), person(p, Role.SCIENTIST)
    registry.register(p, registrar, trained.run_id, name)
    registry.register(p, other, model_dir, name, parent=f"{name}@1", variant="onnx-int8")
    made = f"trained {name}@1, which {name}@2 derives from, and cannot also"
    with pytest.raises(PermissionDeniedError, match=made):
        registry.promote(p, trainer, f"{name}@2", "production", gates=gate_runner(PASSING))
    with pytest.raises(PermissionDeniedError, match=f"registered {name}@1, which {name}@2 derives from"):
        registry.promote(p, registrar, f"{name}@2", "production", gates=gate_runner(PASSING))
    registry.attest(p, person(p, Role.APPROVER), f"{name}@2", "gates", {"checks": []}, passed=True)
    with pytest.raises(PermissionDeniedError, match=made):
        deploy(p, trainer, name, version=2, mode="canary", weight=100)
    assert registry.history(p, trainer, name) == []


def test_a_row_edited_to_name_no_run_does_not_hide_who_trained_it(
    trained_platform: Platform, trained: TrainedModel, name: str
) -> None:
    # Four eyes reads the trainer from the signed manifest: the row's run_id may be NULL (older versions
    # leave it so, and verification lets that pass), which hid the trainer from promote and deploy.
    from modelyard.serving import deploy

    p = trained_platform
    trainer, scientist = p.context(), person(p, Role.SCIENTIST)
    info = registry.register(p, scientist, trained.run_id, name)
    with p.db.write() as s:
        s.execute(
            text("UPDATE model_versions SET run_id = NULL WHERE manifest_digest = :d"),
            {"d": info.manifest_digest},
        )
    with pytest.raises(PermissionDeniedError, match=f"trained {name}@1 and cannot also approve it"):
        registry.promote(p, trainer, f"{name}@1", "production", gates=gate_runner(PASSING))
    registry.attest(p, person(p, Role.APPROVER), f"{name}@1", "gates", {"checks": []}, passed=True)
    with pytest.raises(PermissionDeniedError, match="four eyes"):
        deploy(p, trainer, name, version=1, mode="canary", weight=100)
    assert registry.history(p, trainer, name) == []


def test_deleting_the_run_does_not_hide_who_trained_it(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    # The trainer was read from the run's row only: once someone else registered the run, its trainer
    # deleted it and approved their own model for production. The audit log still says who created it.
    from modelyard.serving import deploy
    from modelyard.tracking._store import artifact_files, create_run, delete_run, end_run, log_artifacts

    p = trained_platform
    trainer, scientist = person(p, Role.APPROVER), person(p, Role.SCIENTIST)
    run_id = create_run(p, trainer, "four-eyes")
    log_artifacts(p, trainer, run_id, artifact_files(p, trainer, run_id, model_dir, "model"))
    end_run(p, trainer, run_id)
    registry.register(p, scientist, run_id, name)
    delete_run(p, trainer, run_id)
    with pytest.raises(PermissionDeniedError, match=f"trained {name}@1 and cannot also approve it"):
        registry.promote(p, trainer, f"{name}@1", "production", gates=gate_runner(PASSING))
    registry.attest(p, person(p, Role.APPROVER), f"{name}@1", "gates", {"checks": []}, passed=True)
    with pytest.raises(PermissionDeniedError, match="four eyes"):
        deploy(p, trainer, name, version=1, mode="canary", weight=100)
    assert registry.history(p, trainer, name) == []
    # With no record of who trained it at all, four eyes cannot be checked: refused, not waved through.
    with p.db.write() as s:
        s.execute(text("DELETE FROM audit_log WHERE resource = :r"), {"r": f"run:{run_id}"})
    with pytest.raises(PermissionDeniedError, match=f"who trained {name}@1 is not known"):
        registry.promote(p, person(p, Role.APPROVER), f"{name}@1", "production", gates=gate_runner(PASSING))
    # An unprotected alias needs no four eyes.
    assert registry.promote(p, person(p, Role.ENGINEER), f"{name}@1", "staging").version == 1


def test_protected_alias_moves_only_by_promotion_and_others_by_engineers(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    p = trained_platform
    author, engineer, scientist = p.context(), person(p, Role.ENGINEER), person(p, Role.SCIENTIST)
    registry.register(p, author, model_dir, name)
    with pytest.raises(UsageError, match="protected alias"):
        registry.set_alias(p, engineer, f"{name}@1", "production")
    with pytest.raises(PermissionDeniedError):
        registry.set_alias(p, scientist, f"{name}@1", "staging")
    assert registry.set_alias(p, engineer, f"{name}@1", "staging").version == 1
    assert registry.show(p, scientist, f"{name}@staging").aliases == ["staging"]
    assert registry.delete_alias(p, engineer, name, "staging").previous == 1
    with pytest.raises(UsageError, match="alias"):
        registry.set_alias(p, engineer, f"{name}@1", "Bad Alias")
    with pytest.raises(UsageError, match="reserved"):
        registry.set_alias(p, engineer, f"{name}@1", "latest")


def test_a_failing_fairness_check_blocks_promotion_with_the_numbers_and_a_passing_one_promotes(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    p = trained_platform
    author, approver = p.context(), person(p, Role.APPROVER)
    registry.register(p, author, model_dir, name)
    measure = policy(fairness=[{"metric": "rougeL", "max_gap": 1.0}])
    report = check_gates(p, author, f"{name}@1", measure, attest=False)
    [fair] = report.checks
    gap = fair.value
    assert gap is not None and gap > 0.01, (
        "the trained model's slices must differ for this test to mean anything"
    )

    strict = policy(fairness=[{"metric": "rougeL", "max_gap": round(gap / 2, 4), "min_examples": 5}])
    with pytest.raises(GateFailedError) as err:
        registry.promote(p, approver, f"{name}@1", "production", gates=gate_runner(strict))
    message = err.value.message
    assert "fairness" in message and f"{gap:.4g}" in message and "FAILED by" in message
    assert registry.history(p, author, name) == []
    [failed] = registry.attestations(p, author, f"{name}@1", kind="gates")
    assert failed["passed"] is False and failed["result"]["checks"][0]["value"] == pytest.approx(gap)

    lenient = policy(fairness=[{"metric": "rougeL", "max_gap": round(gap + 0.01, 4), "min_examples": 5}])
    assert registry.promote(p, approver, f"{name}@1", "production", gates=gate_runner(lenient)).version == 1


def test_every_kind_of_check_is_measured_and_judged(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    p = trained_platform
    author, approver = p.context(), person(p, Role.APPROVER)
    registry.register(p, author, model_dir, name)
    registry.register(p, author, model_dir, name)
    full = policy(
        metrics=["rougeL >= 0.01", "rougeL >= production - 0.01", "exact_match > production"],
        fairness=[{"metric": "rougeL", "min": 0.0}],
        robustness={"metric": "rougeL", "min_ratio": 0.01, "seed": 3},
        latency={"p95_ms": 0.001, "samples": 5, "warmup": 1},
        size={"max_mb": 0.01},
    )
    first = check_gates(p, author, f"{name}@1", full)
    by_name = {c.name: c for c in first.checks}
    assert by_name["metrics: rougeL >= 0.01"].passed
    assert "skipped" in by_name["metrics: rougeL >= production - 0.01"].note  # nothing at production yet
    assert not by_name["latency: p95 at batch 1 (ms)"].passed  # 1 µs: no model answers that fast
    assert not by_name["size: on disk (MB)"].passed
    robust = first.measured["robustness"]
    assert set(robust["by_kind"]) == {"typos", "casing", "whitespace", "punctuation", "numbers"}
    assert first.measured["latency"]["p95_ms"] >= first.measured["latency"]["p50_ms"] > 0
    assert not first.passed and "latency" in first.summary() and "size" in first.summary()

    registry.promote(p, approver, f"{name}@1", "production", gates=gate_runner(PASSING))
    second = check_gates(p, author, f"{name}@2", full)
    rel = {c.name: c for c in second.checks}
    same = rel["metrics: rougeL >= production - 0.01"]
    assert same.passed and same.bound == pytest.approx(second.measured["metrics"]["rougeL"] - 0.01)
    assert not rel["metrics: exact_match > production"].passed  # identical weights cannot beat themselves


def test_a_tampered_attestation_fails_verification(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    p = trained_platform
    ctx = p.context()
    registry.register(p, ctx, model_dir, name)
    check_gates(p, ctx, f"{name}@1", policy(metrics=["rougeL >= 0.99"]))  # fails: stored as failed
    with p.db.write() as s:
        body = s.execute(text("SELECT id, body FROM model_attestations ORDER BY id DESC LIMIT 1")).one()
        forged = json.loads(body[1]) | {"passed": True}
        s.execute(
            text("UPDATE model_attestations SET body = :b, passed = 1 WHERE id = :i"),
            {"b": json.dumps(forged, sort_keys=True, separators=(",", ":")), "i": body[0]},
        )
    with pytest.raises(IntegrityError, match="attestation"):
        registry.verify(p, ctx, f"{name}@1")


def test_a_failed_gate_run_with_its_passed_column_flipped_lets_nothing_through(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    # The body is signed, the columns next to it are not: deployment selected by the `passed` column and
    # verification did not compare it with the body, so one UPDATE turned a failed gate run into a pass.
    from modelyard.serving import deploy

    p = trained_platform
    author, approver = p.context(), person(p, Role.APPROVER)
    registry.register(p, author, model_dir, name)
    registry.attest(p, approver, f"{name}@1", "gates", {"checks": []}, passed=True)
    failed = registry.attest(p, approver, f"{name}@1", "gates", {"checks": []}, passed=False)
    with pytest.raises(GateFailedError, match="no passing gate run"):
        deploy(p, approver, name, version=1, mode="canary", weight=100)
    for column in ("passed = 1", "kind = 'notes'"):  # a pass, or the failed run hidden behind the older pass
        with p.db.write() as s:
            s.execute(text(f"UPDATE model_attestations SET {column} WHERE id = :i"), {"i": failed})
        with pytest.raises(IntegrityError, match=f"attestation {failed}: the record says"):
            registry.verify(p, author, f"{name}@1")
        with pytest.raises(IntegrityError, match=f"attestation {failed}: the record says"):
            deploy(p, approver, name, version=1, mode="canary", weight=100)
        with p.db.write() as s:
            s.execute(
                text("UPDATE model_attestations SET passed = 0, kind = 'gates' WHERE id = :i"), {"i": failed}
            )


def test_a_signing_key_planted_in_the_database_is_not_trusted(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    """Someone who can write the database but not read the master key adds a key pair of their own (its
    public half, and the real key's wrapped private half copied beside it) and signs a forged attestation."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    p = trained_platform
    ctx = p.context()
    registry.register(p, ctx, model_dir, name)
    check_gates(p, ctx, f"{name}@1", policy(metrics=["rougeL >= 0.99"]))  # fails: stored as failed
    mine = Ed25519PrivateKey.generate()
    public = mine.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kid = hashlib.sha256(public).hexdigest()[:32]
    with p.db.write() as s:
        real = s.execute(text("SELECT master_key_id, wrapped_private FROM signing_keys LIMIT 1")).one()
        s.execute(
            text(
                "INSERT INTO signing_keys (id, public_key, master_key_id, wrapped_private, created_at, "
                "created_by) VALUES (:i, :p, :m, :w, CURRENT_TIMESTAMP, 'mallory')"
            ),
            {"i": kid, "p": public.hex(), "m": real[0], "w": real[1]},
        )
        att_id, body = s.execute(
            text("SELECT id, body FROM model_attestations ORDER BY id DESC LIMIT 1")
        ).one()
        forged = json.dumps(json.loads(body) | {"passed": True}, sort_keys=True, separators=(",", ":"))
        s.execute(
            text(
                "UPDATE model_attestations SET body = :b, passed = 1, key_id = :k, signature = :g "
                "WHERE id = :i"
            ),
            {"b": forged, "k": kid, "g": mine.sign(forged.encode()).hex(), "i": att_id},
        )
    with pytest.raises(IntegrityError, match=f"signing key {kid} is not this installation's"):
        registry.verify(p, ctx, f"{name}@1")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"data": DATA, "metricz": ["rougeL >= 1"]}, "did you mean 'metrics'"),
        ({"data": DATA, "metrics": ["rougeL >== 1"]}, "not a metric check"),
        ({"data": DATA, "metrics": ["accuracy >= 0.5"]}, "unknown metric"),
        ({"data": DATA, "metrics": ["rougeL >= 0.5; DROP TABLE runs"]}, "not a metric check"),
        ({"data": DATA, "metrics": ["rougeL >= " + "p" * 65 + " - 0.1"]}, "not a metric check"),
        ({"data": {"dataset": "norm@1"}, "fairness": [{"max_gap": 0.1}]}, "group column"),
        ({"data": DATA, "fairness": [{"metric": "rougeL"}]}, "max_gap, min or both"),
        ({"data": DATA}, "checks nothing"),
        ({"data": DATA, "latency": {"p95_ms": "fast"}}, "latency.p95_ms"),
        ({"data": DATA, "robustness": {"perturbations": ["emoji"]}}, "perturbations"),
        ({"data": {"dataset": "norm"}, "size": {"max_mb": 1}}, "data.dataset"),
        (["not", "a", "mapping"], "mapping"),
        ({"data": {**DATA, "group_field": "source"}, "size": {"max_mb": 1}}, "group_field 'source' is the"),
        ({"data": {**DATA, "source_field": "target"}, "size": {"max_mb": 1}}, "both 'target'"),
        ({"data": DATA, "fairness": [{"group": "target", "max_gap": 0.5}]}, "group 'target' is the source"),
    ],
)
def test_bad_policies_are_one_clear_error(data: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_policy(data)


def test_the_model_card_shows_what_was_verified(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path, name: str
) -> None:
    p = trained_platform
    author, approver = p.context(), person(p, Role.APPROVER)
    info = registry.register(
        p,
        author,
        model_dir,
        name,
        description="Normalises <script>alert(1)</script> dates",
        eval_report=trained.report,
    )
    registry.promote(p, approver, info.spec, "production", gates=gate_runner(PASSING))
    card = registry.model_card(p, author, info.spec)
    md, html = card.markdown(), card.html()
    for heading in (
        "Intended use",
        "Training data",
        "Metrics",
        "Quality gates",
        "Optimisation",
        "Lineage",
        "Alias history",
        "Signature",
    ):
        assert f"## {heading}" in md and f"<h2>{heading}</h2>" in html
    assert "PASSED" in md and "rougeL >= 0.0" in md and info.manifest_digest in md and info.key_id in md
    assert "| slice | n |" in md and "en-US" in md and "copy baseline" in md
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<script>" not in md and "&lt;script>" in md


def test_user_text_on_a_card_stays_text_in_markdown_and_html() -> None:
    """A description, a reason or a name on the card adds no HTML, link, image, heading, list or table
    cell to card.md when a Markdown renderer shows it (card.html was already escaped)."""
    from markdown_it import MarkdownIt

    from modelyard.registry._card import Card, Code

    hostile = (
        "ok <script>alert(1)</script>\n# heading\r- item\n![x](http://e/x.png) [l](javascript:x) *em* `c` "
        "<https://e> &lt;b&gt;"
    )
    card = Card(
        "Model card: m@1",
        [
            ("Intended use", [hostile, "1. not a list", "  > not a quote", Code("yard models verify m@1")]),
            ("Alias history", [(["by", "reason"], [["x|y", hostile]])]),
        ],
    )
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(card.markdown())
    for tag in ("<script", "<a ", "<img", "<em>", "<ul>", "<ol>", "<blockquote>", "<h1>heading"):
        assert tag not in rendered and tag not in card.html()
    assert rendered.count("<h2>") == 2 and rendered.count("<td>") == 2  # one row, two cells
    assert "<p>ok &lt;script&gt;alert(1)&lt;/script&gt; # heading - item ![x](http://e/x.png)" in rendered
    assert "&amp;lt;b&amp;gt;" in rendered  # what was typed, not what it would decode to
    assert "<code>yard models verify m@1</code>" in rendered and "<code>" not in rendered.split("<code>y")[0]


def test_bare_urls_and_addresses_on_a_card_are_not_autolinked() -> None:
    """GFM viewers (GitHub, remark-gfm...) link a bare https://..., www.... or user@host in text; a card's
    user text showed such links although it is escaped against every other link form. They stay
    readable text: the rendered card shows what was typed."""
    import re

    from markdown_it import MarkdownIt

    from modelyard.registry._card import Card

    hostile = "see https://evil.example/x, WWW.evil.example, ftp://e.example and mail ops@evil.example"
    card = Card("Model card: m@1", [("Intended use", [hostile]), ("Data", [(["dataset"], [[hostile]])])])
    md = card.markdown()
    # What GFM's extended autolinks are made of: a scheme's "://", "www." and an address's "@" before a
    # domain, each literal (a backslash escape splits the text they are found in).
    assert not re.search(r"(?<!\\)://|(?i:www)\.|(?<!\\)@(?=\S*\.)", md)
    assert "m@1" in md  # a version spec is no address
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert f"<p>{hostile}</p>" in rendered and f"<td>{hostile}</td>" in rendered
    assert "<a " not in rendered


def test_the_example_policy_runs(trained_platform: Platform, model_dir: Path, name: str) -> None:
    """examples/flan-t5/gates.yaml as shipped (its data pointed at this session's dataset)."""
    from modelyard.evaluation import load_policy

    shipped = load_policy(Path(__file__).parents[2] / "examples" / "flan-t5" / "gates.yaml")
    assert shipped.data.dataset == "normalise@1" and {c.metric for c in shipped.checks} == {
        "rougeL",
        "exact_match",
    }
    assert shipped.fairness and shipped.robustness and shipped.latency and shipped.size
    local = shipped.model_copy(
        update={"data": shipped.data.model_copy(update={"dataset": "norm@1", "max_samples": 40})}
    )
    p = trained_platform
    registry.register(p, p.context(), model_dir, name)
    report = check_gates(p, p.context(), f"{name}@1", local, attest=False)
    kinds = {c.kind for c in report.checks}
    assert kinds == {"metric", "fairness", "robustness", "latency", "size"}
    # the 300-step session model is far below the tiny recipe's 1500-step quality: the floor fails
    assert not report.passed and "rougeL >= 0.5" in report.summary()


@pytest.mark.parametrize(
    ("kind", "result", "passed", "message"),
    [
        ("gates", {}, 1, "passed must be True or False"),
        ("gates", {}, "yes", "passed must be True or False"),
        ("", {}, True, "short name"),
        ("x" * 65, {}, True, "short name"),
        ("gates", ["not", "a", "mapping"], True, "is a mapping"),
        # Was a TypeError from the JSON encoder inside the write, not a clear refusal.
        ("review", {"seen": {"a", "b"}}, True, "result must be JSON"),
        ("review", {1: "x", "y": 2}, True, "result must be JSON"),
    ],
)
def test_malformed_attestations_are_refused_before_anything_is_signed(
    trained_platform: Platform,
    model_dir: Path,
    name: str,
    kind: str,
    result: object,
    passed: object,
    message: str,
) -> None:
    # passed=1 was signed as 1: the row's boolean never matched the body again, so verify, promote and
    # deploy refused the version for ever.
    p = trained_platform
    registry.register(p, p.context(), model_dir, name)
    with pytest.raises(UsageError, match=message):
        registry.attest(p, p.context(), f"{name}@1", kind, result, passed=passed)  # type: ignore[arg-type]
    assert registry.verify(p, p.context(), f"{name}@1").attestations == 0
