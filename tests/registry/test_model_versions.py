"""Registering, verifying, loading and tampering: immutable signed versions of real trained models."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select, text

from modelyard import registry
from modelyard.core import Platform, Role, rotate_master_key
from modelyard.core._models import AuditRecord, Blob, LineageEdge, ModelVersion
from modelyard.core._signing import list_signing_keys
from modelyard.errors import (
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    UnsafePathError,
    UsageError,
)
from modelyard.testing import TrainedModel, actor, make_platform

SOURCES = [
    "Convert 3 March 2024 to ISO format",
    "Write 1,234.50 EUR as a canonical amount",
    "Normalise the address: 12 rue de la Paix, Paris",
]


def stored_object(platform: Platform, digest: str) -> tuple[Path, int]:
    """The object file holding ``digest`` and the offset of its bytes in it."""
    with platform.db.read() as s:
        name, offset = s.execute(
            select(Blob.object_name, Blob.pack_offset).where(Blob.digest == digest)
        ).one()
    return platform.settings.home / "artifacts" / name, offset or 0


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def audit_outcomes(platform: Platform, action: str) -> list[str]:
    with platform.db.read() as s:
        return list(s.scalars(select(AuditRecord.outcome).where(AuditRecord.action == action)))


def test_init_creates_one_signing_key(platform: Platform) -> None:
    keys = list_signing_keys(platform)
    assert len(keys) == 1 and keys[0].active and len(keys[0].public_key) == 64


def test_register_from_a_run_records_lineage_and_protects_its_data(
    trained: TrainedModel, trained_platform: Platform
) -> None:
    ctx = trained_platform.context()
    info = registry.register(trained_platform, ctx, trained.run_id, "from-run", description="date normaliser")
    assert (info.version, info.format, info.variant, info.run_id) == (
        1,
        "safetensors",
        "fp32",
        trained.run_id,
    )
    report = json.loads(trained.report.read_text())
    assert info.metrics == pytest.approx(report["overall"]) and info.metrics["rougeL"] > 0.05
    _, manifest = registry.read_manifest(trained_platform, ctx, "from-run@1")
    lineage = manifest["lineage"]
    assert lineage["run"] == trained.run_id and lineage["datasets"] == ["norm@1"]
    assert lineage["recipe"] is not None and len(lineage["recipe"]) == 64
    paths = {f["path"] for f in manifest["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= paths
    assert registry.eval_report(trained_platform, ctx, "from-run@1") == report
    with trained_platform.db.read() as s:
        edges = set(s.execute(select(LineageEdge.src, LineageEdge.dst, LineageEdge.relation)).all())
    assert (f"run:{trained.run_id}", "model:from-run@1", "registered") in edges
    assert ("dataset:norm@1", "model:from-run@1", "trained-on") in edges
    # The data version it was trained on can no longer be deleted without an admin's --force.
    from modelyard.data import remove

    with pytest.raises(UsageError, match="model:from-run@1"):
        remove(trained_platform, ctx, "norm@1")
    # A unique prefix of the run id does too, as `yard runs ls` shows them.
    again = registry.register(trained_platform, ctx, trained.run_id[:8], "from-run")
    assert (again.version, again.run_id) == (2, trained.run_id)
    with pytest.raises(NotFoundError, match="run 000000"):
        registry.register(trained_platform, ctx, "000000", "from-run")


def test_register_a_directory_then_verify_and_load_it(
    platform: Platform, model_dir: Path, trained: TrainedModel
) -> None:
    ctx = platform.context()
    info = registry.register(platform, ctx, model_dir, "t5", eval_report=trained.report)
    assert info.spec == "t5@1" and info.files == len(list(model_dir.iterdir()))
    report = registry.verify(platform, ctx, "t5@1")
    assert report.files == info.files and report.bytes == sum(p.stat().st_size for p in model_dir.iterdir())
    from modelyard.training import generate, load_model

    expected = generate(load_model(model_dir), _tokenizer(model_dir), SOURCES, max_new_tokens=16)
    loaded = registry.load("t5", platform=platform, ctx=ctx)  # NAME alone: the newest version
    assert loaded.backend == "torch" and loaded.spec == "t5@1"
    assert loaded.generate(SOURCES, max_new_tokens=16) == expected
    assert len(set(expected)) > 1  # the trained model answers each input differently
    assert audit_outcomes(platform, "model.register") == ["ok"]


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (b'{"overall": [1, 2]}', "malformed"),
        (b'{"overall": {"rougeL": NaN}}', "rougeL is not a finite number"),
        (b'{"overall": {"bleu": Infinity, "rougeL": 0.3}}', "bleu is not a finite number"),
        (b"[]", "malformed"),
        (b'{"overall": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed"),  # was a RecursionError
    ],
)
def test_an_evaluation_report_of_the_wrong_shape_is_refused_on_record(
    platform: Platform, model_dir: Path, report: bytes, message: str
) -> None:
    ctx = platform.context()
    with pytest.raises(UsageError, match=message):
        registry.register(platform, ctx, model_dir, "bad-report", eval_report=report)
    assert all(m.name != "bad-report" for m in registry.list_models(platform, ctx))
    assert audit_outcomes(platform, "model.register")[-1] == "refused"


def test_lineage_naming_a_run_is_checked_and_recorded(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path
) -> None:
    ctx = trained_platform.context()
    with pytest.raises(NotFoundError, match="run"):  # a run of nobody's: not signed into a manifest
        registry.register(trained_platform, ctx, model_dir, "claims", lineage={"run": "ab" * 16})
    info = registry.register(trained_platform, ctx, model_dir, "claims", lineage={"run": trained.run_id})
    _, manifest = registry.read_manifest(trained_platform, ctx, info.spec)
    assert manifest["lineage"]["run"] == trained.run_id and manifest["lineage"]["datasets"] == ["norm@1"]
    registry.verify(trained_platform, ctx, info.spec)
    from modelyard.tracking import Client

    with Client(trained_platform) as client, client.start_run("elsewhere", capture=False) as other:
        pass
    for source, extra in ((trained.run_id, {}), (model_dir, {"trained_by": trained.run_id})):
        with pytest.raises(
            UsageError, match=f"lineage names run {other.id[:8]}, but run {trained.run_id[:8]}"
        ):
            registry.register(trained_platform, ctx, source, "claims", lineage={"run": other.id}, **extra)  # type: ignore[arg-type]


def test_a_version_whose_row_never_recorded_its_signed_run_still_verifies(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path
) -> None:
    # Before 2026-12-06, register(dir, lineage={"run": ...}) signed the run but left run_id NULL.
    ctx = trained_platform.context()
    info = registry.register(trained_platform, ctx, model_dir, "older", lineage={"run": trained.run_id})
    with trained_platform.db.write() as s:
        s.execute(
            text("UPDATE model_versions SET run_id = NULL WHERE id = (SELECT max(id) FROM model_versions)")
        )
    registry.verify(trained_platform, ctx, info.spec)


def _tokenizer(path: Path) -> object:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def test_versions_are_numbered_without_gaps_and_download_byte_for_byte(
    platform: Platform, model_dir: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    for expected in (1, 2, 3):
        assert registry.register(platform, ctx, model_dir, "m").version == expected
    assert [v.version for v in registry.list_versions(platform, ctx, "m")] == [1, 2, 3]
    info, out = registry.download(platform, ctx, "m@2", tmp_path / "out")
    assert info.version == 2
    for f in model_dir.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes()
    with pytest.raises(UsageError, match="not an empty directory"):
        registry.download(platform, ctx, "m@2", out)


def test_download_over_an_existing_directory_does_not_follow_a_planted_symlink(
    platform: Platform, model_dir: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    (model_dir / "extra").mkdir()
    (model_dir / "extra" / "notes.json").write_text("{}")
    registry.register(platform, ctx, model_dir, "m")
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "extra").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symbolic link") as caught:
        registry.download(platform, ctx, "m@1", target, overwrite=True)
    assert f"{target.resolve() / 'extra'} is a symbolic link" in caught.value.message
    assert list(outside.iterdir()) == [] and sorted(p.name for p in target.iterdir()) == ["extra"]
    (target / "extra").unlink()
    registry.download(platform, ctx, "m@1", target, overwrite=True)
    assert (target / "extra" / "notes.json").read_text() == "{}"


def test_a_flipped_byte_in_a_stored_file_fails_verify_and_load_naming_the_file(
    platform: Platform, model_dir: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    registry.register(platform, ctx, model_dir, "t5")
    _, manifest = registry.read_manifest(platform, ctx, "t5@1")
    weights = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
    path, offset = stored_object(platform, weights["sha256"])
    flip_byte(path, offset + 5000)
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        registry.verify(platform, ctx, "t5@1")
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        registry.load("t5@1", platform=platform, ctx=ctx)
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        registry.download(platform, ctx, "t5@1", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_flipped_byte_in_the_manifest_fails_verify_and_load(platform: Platform, model_dir: Path) -> None:
    ctx = platform.context()
    info = registry.register(platform, ctx, model_dir, "t5")
    path, offset = stored_object(platform, info.manifest_digest)
    flip_byte(path, offset + 100)
    with pytest.raises(IntegrityError, match="manifest"):
        registry.verify(platform, ctx, "t5@1")
    with pytest.raises(IntegrityError, match="manifest"):
        registry.load("t5@1", platform=platform, ctx=ctx)


def test_an_alias_is_not_moved_onto_a_tampered_version(platform: Platform, model_dir: Path) -> None:
    """A rollback (or a set) to a version whose stored bytes changed is refused on record, and the alias
    stays where it was (serving would have refused to load it and kept the version rolled away from)."""
    ctx = platform.context()
    first = registry.register(platform, ctx, model_dir, "t5")
    registry.register(platform, ctx, model_dir, "t5")
    registry.set_alias(platform, ctx, "t5@1", "staging")
    registry.set_alias(platform, ctx, "t5@2", "staging")
    path, offset = stored_object(platform, first.manifest_digest)
    flip_byte(path, offset + 100)
    with pytest.raises(IntegrityError, match="manifest"):
        registry.rollback(platform, ctx, "t5", "staging")
    with pytest.raises(IntegrityError, match="manifest"):
        registry.set_alias(platform, ctx, "t5@1", "canary")
    assert registry.show(platform, ctx, "t5@staging").version == 2
    assert [e.action for e in registry.history(platform, ctx, "t5")] == ["set", "set"]
    assert audit_outcomes(platform, "model.deploy") == ["ok", "ok", "refused", "refused"]
    flip_byte(path, offset + 100)  # mended: the rollback goes through
    assert registry.rollback(platform, ctx, "t5", "staging").version == 1


def test_a_deployment_is_not_pointed_at_a_tampered_version(platform: Platform, model_dir: Path) -> None:
    """As for an alias: a canary (or shadow) of a version whose stored bytes changed was recorded, and every
    server then failed to load it, retrying each minute, while `yard deploy` had said nothing."""
    from modelyard.serving import deploy
    from modelyard.serving._deploy import current

    ctx = platform.context()
    registry.register(platform, ctx, model_dir, "t5")
    second = registry.register(platform, ctx, model_dir, "t5")
    _, manifest = registry.read_manifest(platform, ctx, "t5@2")
    weights = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
    path, offset = stored_object(platform, weights["sha256"])
    flip_byte(path, offset + 5000)
    for mode, weight in (("canary", 10), ("shadow", 0)):
        with pytest.raises(IntegrityError, match=r"t5@2: file model\.safetensors"):
            deploy(platform, ctx, "t5", version=second.version, mode=mode, weight=weight)
    assert current(platform, ctx, "t5") is None
    assert audit_outcomes(platform, "model.deploy") == ["refused", "refused"]
    flip_byte(path, offset + 5000)  # mended: the canary goes through
    assert deploy(platform, ctx, "t5", version=2, mode="canary", weight=10).candidate == 2


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("variant", "'onnx-int8'", "variant"),
        ("version", "7", "version"),
        ("files", "1", "file count"),
        ("signature", "'" + "00" * 64 + "'", "signature does not match"),
        # what four eyes, the card and the listings read (helper-17: edits passed verify)
        ("created_by", "'someone-else'", "created_by='someone-else'"),
        ("description", "'approved by legal'", "description="),
        ("metrics", """'{"rougeL": 0.99}'""", "metrics="),
        ("run_id", "'" + "ab" * 16 + "'", "run="),
    ],
)
def test_an_altered_database_record_is_detected(
    platform: Platform, model_dir: Path, column: str, value: str, message: str
) -> None:
    ctx = platform.context()
    registry.register(platform, ctx, model_dir, "t5")
    with platform.db.write() as s:
        s.execute(text(f"UPDATE model_versions SET {column} = {value}"))
    spec = "t5@7" if column == "version" else "t5@1"
    with pytest.raises(IntegrityError, match=message):
        registry.verify(platform, ctx, spec)


def test_a_manifest_swapped_between_versions_is_detected(platform: Platform, model_dir: Path) -> None:
    """Both manifests are validly signed; the one of version 1 must not pass as version 2."""
    ctx = platform.context()
    first = registry.register(platform, ctx, model_dir, "t5")
    registry.register(platform, ctx, model_dir, "t5")
    with platform.db.write() as s:
        row1 = s.execute(select(ModelVersion).where(ModelVersion.version == 1)).scalar_one()
        s.execute(
            text("UPDATE model_versions SET manifest_digest = :d, signature = :sig WHERE version = 2"),
            {"d": first.manifest_digest, "sig": row1.signature},
        )
    with pytest.raises(IntegrityError, match="version"):
        registry.verify(platform, ctx, "t5@2")


class _Runs:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pytorch_model.bin", pickle.dumps({"w": [1.0]}), "pickle"),
        ("weights.pkl", b"not even a pickle", "pickle"),
        ("extra.json", pickle.dumps({"looks": "like json"}), "pickle"),
        ("more.safetensors", b"PK\x03\x04zipped torch archive", "pickle"),
        ("bad.safetensors", b"\xff" * 64, "not a safetensors file"),
        ("notes.json", b"{not json", "not valid JSON"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # was a RecursionError
        ("deep.safetensors", (200_000).to_bytes(8, "little") + b"[" * 100_000 + b"]" * 100_000, "not a JSON"),
        ("loader.py", b"import os", "not accepted"),
        # protocols 0 and 1 have no header: a code-running pickle under a text name (helper-17)
        ("vocab.txt", pickle.dumps(_Runs(), protocol=0), "pickle"),
        ("extra.yaml", pickle.dumps(_Runs(), protocol=1), "pickle"),
        ("café.json", b"{}", "one name once normalised"),  # beside the decomposed café.json
        ("CONFIG.json", b"{}", "one name once normalised or case-folded"),
    ],
)
def test_pickles_and_foreign_files_are_refused_before_anything_is_stored(
    platform: Platform, model_dir: Path, name: str, content: bytes, message: str
) -> None:
    ctx = platform.context()
    (model_dir / name).write_bytes(content)
    if name == "café.json":
        (model_dir / unicodedata.normalize("NFD", name)).write_bytes(content)
    with platform.db.read() as s:
        blobs_before = s.execute(text("SELECT count(*) FROM blobs")).scalar_one()
    with pytest.raises(UsageError, match=message) as err:
        registry.register(platform, ctx, model_dir, "t5")
    assert name in err.value.message
    with platform.db.read() as s:
        assert s.execute(text("SELECT count(*) FROM blobs")).scalar_one() == blobs_before
        assert s.execute(text("SELECT count(*) FROM model_versions")).scalar_one() == 0
    assert audit_outcomes(platform, "model.register") == ["refused"]


def test_symlinks_and_missing_sources_are_refused(
    platform: Platform, model_dir: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    (tmp_path / "outside.json").write_text("{}")
    os.symlink(tmp_path / "outside.json", model_dir / "linked.json")
    with pytest.raises(UsageError, match="symlink"):
        registry.register(platform, ctx, model_dir, "t5")
    with pytest.raises(UsageError, match="not a directory"):
        registry.register(platform, ctx, tmp_path / "nope", "t5")
    with pytest.raises(NotFoundError, match="run"):
        registry.register(platform, ctx, "0" * 32, "t5")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, c, d: registry.register(p, c, d, "../evil"), "model name"),
        (lambda p, c, d: registry.register(p, c, d, "t5", variant="INT 8"), "variant"),
        (lambda p, c, d: registry.register(p, c, d, "t5", description="x" * 5000), "description"),
        (lambda p, c, d: registry.register(p, c, d, "t5", parent="ghost@1"), "not found"),
        (lambda p, c, d: registry.show(p, c, "t5@0"), "versions are 1, 2, 3"),
        (lambda p, c, d: registry.show(p, c, "t5@Prod"), "alias"),
        (lambda p, c, d: registry.show(p, c, "t5@1@2"), "not a model version"),
        (lambda p, c, d: registry.show(p, c, "ghost"), "not found"),
    ],
)
def test_bad_input_is_a_clear_error(platform: Platform, model_dir: Path, call: object, message: str) -> None:
    with pytest.raises((UsageError, NotFoundError), match=message):
        call(platform, platform.context(), model_dir)  # type: ignore[operator]


def test_a_failure_to_stage_the_files_is_a_clear_error_on_record(
    platform: Platform, tmp_path: Path, tiny_model: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's disk cannot take the sealed files (here: its staging area is not a directory, as
    a full or read-only disk makes writes fail): a BackendError naming the cause, an audit record of the
    attempt, and nothing stored."""
    from modelyard.errors import BackendError

    model_dir = tiny_model()
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")
    monkeypatch.setattr(platform.backend, "staging_dir", lambda: blocked)
    with pytest.raises(BackendError, match="model:t5") as err:
        registry.register(platform, platform.context(), model_dir, "t5")
    assert "Not a directory" in err.value.message
    assert audit_outcomes(platform, "model.register") == ["refused"]
    with platform.db.read() as s:
        assert s.execute(text("SELECT count(*) FROM model_versions")).scalar_one() == 0
        code = s.scalars(select(AuditRecord.detail).where(AuditRecord.action == "model.register")).one()
    assert json.loads(code)["code"] == "backend_error"
    assert list(platform.backend.list("objects/")) == []


def test_roles(platform: Platform, model_dir: Path) -> None:
    admin = platform.context()
    viewer = actor(platform, admin, "vera", Role.VIEWER)
    with pytest.raises(PermissionDeniedError):
        registry.register(platform, viewer, model_dir, "t5")
    registry.register(platform, admin, model_dir, "t5")
    assert registry.show(platform, viewer, "t5@1").version == 1  # viewers read
    registry.verify(platform, viewer, "t5@1")


def test_signing_survives_master_key_rotation(platform: Platform, model_dir: Path) -> None:
    ctx = platform.context()
    registry.register(platform, ctx, model_dir, "t5")
    rotate_master_key(platform, ctx)
    fresh = Platform(platform.settings)
    try:
        registry.register(fresh, ctx, model_dir, "t5")  # the signing key (a blob) was re-wrapped too
        for spec in ("t5@1", "t5@2"):
            registry.verify(fresh, ctx, spec)
    finally:
        fresh.close()


REGISTER = """
import sys
from modelyard.core import Platform
from modelyard.registry import register
with Platform() as p:
    print(register(p, p.context(), sys.argv[1], "shared").version)
"""


def _register_concurrently(model_dir: Path, env: dict[str, str], n: int = 8) -> list[int]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER, str(model_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        out.append(int(stdout.split()[-1]))
    return sorted(out)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    return {**env, "YARD_HOME": str(home), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_eight_processes_registering_at_once_get_versions_1_to_8(platform: Platform, model_dir: Path) -> None:
    assert _register_concurrently(model_dir, _env(platform.settings.home)) == list(range(1, 9))
    ctx = platform.context()
    assert [v.version for v in registry.list_versions(platform, ctx, "shared")] == list(range(1, 9))
    for v in range(1, 9):
        registry.verify(platform, ctx, f"shared@{v}")


@pytest.mark.slow
@pytest.mark.postgres
def test_eight_processes_registering_at_once_on_postgresql(
    postgres_url: str, model_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "pg-home"
    platform = make_platform(home, database_url=postgres_url)
    try:
        env = _env(home, YARD_DATABASE_URL=postgres_url)
        assert _register_concurrently(model_dir, env) == list(range(1, 9))
        ctx = platform.context()
        for v in range(1, 9):
            registry.verify(platform, ctx, f"shared@{v}")
    finally:
        platform.close()
