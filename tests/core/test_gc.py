"""Garbage collection of the artifact store (`yard gc`): what it deletes, what it keeps, who may run it,
and the race with a write that deduplicated onto a blob it collects. On SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard import data
from modelyard.config import load_settings
from modelyard.core import (
    Platform,
    _gc,
    collect_garbage,
    create_project,
    delete_artifact,
    list_records,
    put_artifact,
)
from modelyard.core._artifacts import ArtifactStore
from modelyard.core._gc import GcReport, fence, generation
from modelyard.core._models import Artifact, Blob, CondemnedObject
from modelyard.core._platform import utcnow
from modelyard.data import _manifest
from modelyard.data._secret import project_salt
from modelyard.data._versions import members
from modelyard.errors import (
    CollectedMeanwhileError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    UsageError,
)
from modelyard.testing import TrainedModel, Yard, actor, make_platform, same_tree

NOW = timedelta(0)


@pytest.fixture(autouse=True)
def _no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_manifest, "RACY_NS", 0)  # files written by a test are seconds old


@pytest.fixture
def plat(any_platform: Platform) -> Platform:
    return any_platform


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def rows(p: Platform) -> dict[str, str]:
    """digest -> object name of every blob row."""
    with p.db.read() as s:
        return {d: name for d, name in s.execute(select(Blob.digest, Blob.object_name))}


def objects(p: Platform) -> set[str]:
    return set(p.artifacts.backend.list("objects/"))


def test_gc_deletes_exactly_the_unreferenced_blobs_and_every_holder_keeps_its_own(
    plat: Platform, tmp_path: Path
) -> None:
    ctx = plat.context()
    tree = write(
        tmp_path / "tree",
        {
            "a.txt": b"alpha\n",
            "b.bin": os.urandom(5000),
            "sub/c.bin": os.urandom(70_000),
            "big.bin": os.urandom(5 << 20),  # above PACK_MAX_BLOB: an object of its own
        },
    )
    data.add_version(plat, ctx, tree, "ds")
    v1 = data.show(plat, ctx, "ds@1")
    old = {m.path: m.sha256 for m in members(plat.artifacts, v1.manifest_digest)}
    write(tree, {"b.bin": os.urandom(5000), "big.bin": os.urandom(5 << 20)})
    data.add_version(plat, ctx, tree, "ds")
    note = put_artifact(plat, ctx, write(tmp_path, {"note.txt": b"kept by a reference"}) / "note.txt")
    salt = project_salt(plat, ctx)

    before = rows(plat)
    report = collect_garbage(plat, ctx, min_age=NOW)
    assert (report.blobs, report.objects, report.live) == (0, 0, len(before))  # everything is held
    assert rows(plat) == before

    v1_manifest = v1.manifest_digest
    data.remove(plat, ctx, "ds@1")
    dry = collect_garbage(plat, ctx, min_age=NOW, dry_run=True)
    assert dry.dry_run and dry.blobs == 3 and rows(plat) == before  # v1's manifest, old b.bin, old big.bin

    report = collect_garbage(plat, ctx, min_age=NOW)
    after = rows(plat)
    gone = set(before) - set(after)
    assert report.blobs == 3 and gone == {old["b.bin"], old["big.bin"], v1_manifest}
    # v1's manifest and old big.bin, each an object of its own; v1's pack stays: it still holds a.txt and
    # sub/c.bin, which v2 reuses (old b.bin's bytes stay in it, unreadable without their key)
    assert report.objects == 2
    assert before[old["b.bin"]] in objects(plat) and before[old["big.bin"]] not in objects(plat)
    assert objects(plat) == set(after.values())  # no row without its object, no object without a row
    with pytest.raises(NotFoundError):  # its key went with its row: the bytes cannot be read any more
        b"".join(plat.artifacts.iter_bytes(old["b.bin"]))

    data.checkout(plat, ctx, "ds@2", tmp_path / "out")
    assert same_tree(tmp_path / "out", tree)
    assert project_salt(plat, ctx) == salt
    assert b"".join(plat.artifacts.iter_bytes(note.digest)) == b"kept by a reference"
    entry = [r for r in list_records(plat, ctx) if r["action"] == "artifact.gc"][-1]
    assert entry["outcome"] == "ok" and entry["detail"]["generation"] == 1
    assert (entry["detail"]["blobs"], entry["detail"]["objects"]) == (3, 2)

    data.remove(plat, ctx, "ds@2")
    report = collect_garbage(plat, ctx, min_age=NOW)
    assert (report.blobs, report.objects) == (5, 4)  # v2: its manifest, four files; both packs, two objects
    assert set(rows(plat)) == {note.digest, plat.meta(f"pii_salt:{ctx.project_id}")}
    assert objects(plat) == set(rows(plat).values())  # the packs went once their last blob did


def test_young_blobs_are_kept_and_a_bad_min_age_is_refused(plat: Platform, tmp_path: Path) -> None:
    ctx = plat.context()
    data.add_version(plat, ctx, write(tmp_path / "t", {"x.txt": b"x", "y.txt": b"y"}), "ds")
    data.remove(plat, ctx, "ds@1")
    before = rows(plat)
    report = collect_garbage(plat, ctx)  # default: keep what is younger than an hour
    assert (report.blobs, report.young) == (0, 3) and rows(plat) == before
    with pytest.raises(UsageError, match="min_age"):
        collect_garbage(plat, ctx, min_age=timedelta(seconds=-1))
    assert collect_garbage(plat, ctx, min_age=NOW).blobs == 3


def test_only_an_installation_admin_may_collect(platform: Platform, tmp_path: Path) -> None:
    admin = platform.context()
    data.add_version(platform, admin, write(tmp_path / "t", {"x.txt": b"x"}), "ds")
    data.remove(platform, admin, "ds@1")
    scientist = actor(platform, admin, "sam", "scientist")
    create_project(platform, admin, "tenant")
    tenant_admin = actor(platform, platform.context(project="tenant"), "tia", "admin")
    before = rows(platform)
    with pytest.raises(PermissionDeniedError, match="admin"):
        collect_garbage(platform, scientist, min_age=NOW)
    with pytest.raises(PermissionDeniedError, match="whole installation"):
        collect_garbage(platform, tenant_admin, min_age=NOW)
    assert rows(platform) == before
    denied = [r for r in list_records(platform, admin) if r["action"] == "artifact.gc"]
    assert [r["outcome"] for r in denied] == ["denied"]  # the tenant's refusal is in the tenant's log


def test_an_add_that_reused_collected_blobs_records_nothing_and_the_next_add_uploads_them(
    plat: Platform, tmp_path: Path
) -> None:
    ctx = plat.context()
    tree = write(tmp_path / "tree", {"a.txt": b"alpha\n", "b.bin": os.urandom(9000)})
    data.add_version(plat, ctx, tree, "ds")
    data.remove(plat, ctx, "ds@1")  # its blobs stay until a collection: the next add reuses them
    ran: list[int] = []

    def collect_meanwhile(files: int, total: int) -> None:
        if not ran:  # after the add found its files stored, before it records the version
            ran.append(collect_garbage(plat, plat.context(), min_age=NOW).blobs)

    with pytest.raises(CollectedMeanwhileError, match="run it again"):
        data.add_version(plat, ctx, tree, "ds", progress=collect_meanwhile)
    assert ran == [3]
    assert data.list_versions(plat, ctx, "ds") == []
    info = data.add_version(plat, ctx, tree, "ds")  # uploads them anew
    data.checkout(plat, ctx, f"ds@{info.version}", tmp_path / "out")
    assert same_tree(tmp_path / "out", tree)
    assert objects(plat) == set(rows(plat).values())


def test_an_unreadable_manifest_stops_gc_before_it_deletes_anything(plat: Platform, tmp_path: Path) -> None:
    ctx = plat.context()
    data.add_version(plat, ctx, write(tmp_path / "t", {"x.txt": b"x", "y.txt": b"y"}), "keep")
    data.add_version(plat, ctx, write(tmp_path / "u", {"z.txt": b"z"}), "drop")
    data.remove(plat, ctx, "drop@1")
    manifest = rows(plat)[data.show(plat, ctx, "keep@1").manifest_digest]
    plat.artifacts.backend.delete(manifest)
    before = rows(plat)
    with pytest.raises(IntegrityError, match="stopped before deleting anything"):
        collect_garbage(plat, ctx, min_age=NOW)
    assert rows(plat) == before
    assert [r["outcome"] for r in list_records(plat, ctx) if r["action"] == "artifact.gc"] == ["refused"]


def test_a_registered_model_keeps_its_files_report_recipe_and_manifest(
    platform: Platform,
    model_dir: Path,
    trained: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelyard import registry

    ctx = platform.context()
    recipe = put_artifact(
        platform, ctx, write(tmp_path, {"recipe.yaml": b"model: t5-small\n"}) / "recipe.yaml"
    )
    info = registry.register(
        platform, ctx, model_dir, "t5", eval_report=trained.report, lineage={"recipe": recipe.digest}
    )
    delete_artifact(platform, ctx, recipe.digest)  # now only the model's manifest names the recipe
    before = rows(platform)
    assert collect_garbage(platform, ctx, min_age=NOW).blobs == 0
    assert rows(platform) == before and recipe.digest in before
    assert registry.verify(platform, ctx, "t5@1").files == info.files  # re-reads and checks every file
    assert registry.eval_report(platform, ctx, "t5@1") == json.loads(trained.report.read_bytes())

    # A registration whose recipe is collected before it records names nothing that is gone.
    other = put_artifact(platform, ctx, write(tmp_path, {"r2.yaml": b"model: t5-base\n"}) / "r2.yaml")
    delete_artifact(platform, ctx, other.digest)
    ran = collect_after(platform.artifacts, "stage_files", platform, monkeypatch)
    with pytest.raises(CollectedMeanwhileError, match="model t5"):
        registry.register(platform, ctx, model_dir, "t5", lineage={"recipe": other.digest})
    assert ran == [1] and [v.version for v in registry.list_versions(platform, ctx, "t5")] == [1]


def test_the_gc_command(yard: Yard, tmp_path: Path) -> None:
    yard("init")
    yard("data", "add", str(write(tmp_path / "t", {"x.txt": b"x", "y.txt": b"y"})), "--name", "ds")
    assert "until an admin runs `yard gc`" in yard("data", "rm", "ds@1").out
    out = yard("gc", "--dry-run", "--min-age", "0").out
    assert "would delete 3 unreferenced blob(s)" in out
    assert out.rstrip().endswith("kept 0 referenced") and "younger" not in out  # none is kept for age
    kept = yard("gc").out  # default --min-age 1h
    assert "deleted 0 unreferenced blob(s)" in kept and "3 younger than 1h" in kept
    report = yard("gc", "--min-age", "0", "--json").json()
    assert report["blobs"] == 3 and report["objects"] == 2 and not report["dry_run"]  # manifest, pack
    bad = yard("gc", "--min-age", "soon")
    assert bad.code == 2 and "duration 'soon' is not valid" in bad.err
    bad = yard("gc", "--orphan-min-age", "soon")
    assert bad.code == 2 and "duration 'soon' is not valid" in bad.err
    platform = Platform(load_settings(home=tmp_path / "home"))  # the home the commands use
    try:  # an upload that was never recorded
        platform.artifacts.stage(io.BytesIO(b"orphan"), region=platform.artifacts.region)
    finally:
        platform.close()
    assert yard("gc", "--json").json()["orphans"] == 0  # younger than 24 h
    assert yard("gc", "--orphan-min-age", "0", "--json").json()["orphans"] == 0  # never below --min-age
    out = yard("gc", "--min-age", "0", "--orphan-min-age", "0").out
    assert "deleted 1 object(s) no blob named" in out
    # Repacking: ds@2 keeps one of ds@1's four small files.
    tree = write(tmp_path / "r", {f"{i}.bin": os.urandom(5000) for i in range(4)})
    yard("data", "add", str(tree), "--name", "r")
    write(tree, {f"{i}.bin": os.urandom(4000) for i in range(1, 4)})
    yard("data", "add", str(tree), "--name", "r")
    yard("data", "rm", "r@1")
    bad = yard("gc", "--repack-below", "2")
    assert bad.code == 2 and "--repack-below" in bad.err
    assert "would repack" not in yard("gc", "--dry-run", "--min-age", "0", "--repack-below", "0").out
    out = yard("gc", "--min-age", "0").out
    assert "repacked 1 pack(s) less than 50% live" in out


def test_a_collection_waits_for_a_fenced_writer_and_keeps_what_it_committed(
    plat: Platform, tmp_path: Path
) -> None:
    ctx = plat.context()
    info = put_artifact(plat, ctx, write(tmp_path, {"n.txt": b"reused"}) / "n.txt")
    delete_artifact(plat, ctx, info.digest)  # unreferenced: a candidate for the collection below
    since = generation(plat)
    done: list[GcReport] = []
    with plat.db.write() as s:
        assert fence(s, since) is False  # nothing collected since the writer looked
        collector = threading.Thread(target=lambda: done.append(collect_garbage(plat, ctx, min_age=NOW)))
        collector.start()
        collector.join(1.0)
        assert collector.is_alive() and not done  # held off by the open writer
        s.add(
            Artifact(
                project_id=ctx.project_id,
                digest=info.digest,  # a writer reusing the stored bytes
                name="again",
                region=ctx.region,
                created_at=utcnow(),
                created_by=ctx.user,
            )
        )
    collector.join(60)
    assert done and done[0].blobs == 0  # its re-check saw the committed reference
    assert b"".join(plat.artifacts.iter_bytes(info.digest)) == b"reused"
    assert generation(plat) == since + 1


def test_a_version_recorded_while_gc_marks_keeps_the_blobs_it_reuses(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = plat.context()
    trees = [write(tmp_path / f"t{i}", {"f.bin": os.urandom(3000 + i), "g.txt": b"%d" % i}) for i in range(3)]
    for t in trees:
        data.add_version(plat, ctx, t, "ds")
    data.remove(plat, ctx, "ds@1")  # its blobs are candidates of the collection below
    real = _gc._manifest_refs
    meanwhile: list[int] = []

    def marked_then_rollback(store: ArtifactStore, manifests: Iterable[str]) -> set[str]:
        found = real(store, manifests)
        if not meanwhile:  # between the mark and the sweep: drop ds@3, bring ds@1's tree back
            data.remove(plat, ctx, "ds@3")  # on SQLite the next version row reuses ds@3's id
            meanwhile.append(data.add_version(plat, ctx, trees[0], "ds").version)
        return found

    monkeypatch.setattr(_gc, "_manifest_refs", marked_then_rollback)
    assert collect_garbage(plat, ctx, min_age=NOW).blobs == 0  # the new version names every candidate
    assert meanwhile == [4]
    data.checkout(plat, ctx, "ds@4", tmp_path / "out")
    assert same_tree(tmp_path / "out", trees[0])
    assert collect_garbage(plat, ctx, min_age=NOW).blobs == 3  # ds@3's, on the next collection


def collect_after(
    target: object, attr: str, plat: Platform, monkeypatch: pytest.MonkeyPatch, *, orphans: bool = False
) -> list[int]:
    """Make ``target.attr`` run a full collection right after its first call returns (it has looked up or
    stored what it needs; its caller has not recorded anything yet). Returns the blobs it deleted, or with
    ``orphans`` the objects no row named that it deleted, sweeping them whatever their age."""
    real = getattr(target, attr)
    ran: list[int] = []

    def then_collect(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)
        if not ran:
            age = {"orphan_min_age": NOW} if orphans else {}
            report = collect_garbage(plat, plat.context(), min_age=NOW, **age)
            ran.append(report.orphans if orphans else report.blobs)
        return out

    monkeypatch.setattr(target, attr, then_collect)
    return ran


def test_an_artifact_put_that_reused_a_collected_blob_records_nothing(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = plat.context()
    src = write(tmp_path, {"w.bin": os.urandom(2000)}) / "w.bin"
    delete_artifact(plat, ctx, put_artifact(plat, ctx, src).digest)  # stored, unreferenced
    ran = collect_after(plat.artifacts, "stage_files", plat, monkeypatch)
    with pytest.raises(CollectedMeanwhileError, match="run it again"):
        put_artifact(plat, ctx, src)
    assert ran == [1] and rows(plat) == {}
    info = put_artifact(plat, ctx, src)  # uploads it anew
    assert b"".join(plat.artifacts.iter_bytes(info.digest)) == src.read_bytes()


def test_a_pii_salt_collected_before_it_was_recorded_is_not_recorded(
    plat: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = plat.context()
    ran = collect_after(plat.artifacts, "put", plat, monkeypatch)
    with pytest.raises(CollectedMeanwhileError, match="PII salt"):
        project_salt(plat, ctx)
    assert ran == [1] and plat.meta(f"pii_salt:{ctx.project_id}") is None
    assert project_salt(plat, ctx) == project_salt(plat, ctx)  # created on the next use, then stable


def test_run_artifacts_whose_references_were_collected_meanwhile_are_not_recorded(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.core import _artifacts
    from modelyard.tracking._store import create_run, list_run_artifacts, log_artifacts

    ctx = plat.context()
    run = create_run(plat, ctx, "exp")
    src = write(tmp_path, {"ckpt.bin": os.urandom(1500)}) / "ckpt.bin"
    real = _artifacts.put_artifacts

    def put_then_removed_and_collected(*args: object, **kwargs: object) -> object:
        infos = real(*args, **kwargs)  # type: ignore[arg-type]
        delete_artifact(plat, ctx, infos[0].digest)  # someone drops the reference before the run records it
        assert collect_garbage(plat, ctx, min_age=NOW).blobs == 1
        return infos

    monkeypatch.setattr(_artifacts, "put_artifacts", put_then_removed_and_collected)
    with pytest.raises(CollectedMeanwhileError, match="artifacts"):
        log_artifacts(plat, ctx, run, [(src, "ckpt.bin")])
    assert list_run_artifacts(plat, ctx, run) == []
    monkeypatch.setattr(_artifacts, "put_artifacts", real)
    [(path, digest, _)] = log_artifacts(plat, ctx, run, [(src, "ckpt.bin")])
    assert path == "ckpt.bin" and b"".join(plat.artifacts.iter_bytes(digest)) == src.read_bytes()


@pytest.mark.s3
def test_gc_on_an_s3_store_deletes_objects_and_packs(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    p = make_platform(tmp_path / "home", artifact_uri=f"s3://{s3_bucket}/yard", s3_endpoint_url=s3_endpoint)
    try:
        ctx = p.context()
        files = {"a.txt": b"a", "b.txt": b"b", "big.bin": os.urandom(5 << 20)}
        tree = write(tmp_path / "t", files)
        data.add_version(p, ctx, tree, "ds")
        assert len(objects(p)) == 3  # manifest, pack of a and b, big.bin
        data.remove(p, ctx, "ds@1")
        report = collect_garbage(p, ctx, min_age=NOW)
        assert (report.blobs, report.objects, report.failed_objects) == (4, 3, 0)
        assert objects(p) == set() and rows(p) == {}
        data.add_version(p, ctx, tree, "ds")  # nothing stale is reused: everything is uploaded again
        data.checkout(p, ctx, "ds@2", tmp_path / "out")
        assert same_tree(tmp_path / "out", tree)
        # An object no row names (ages come from the bucket listing): kept at the default age, then swept.
        live = objects(p)
        orphan = p.artifacts.stage(io.BytesIO(b"a crashed write's"), region=p.artifacts.region)
        assert collect_garbage(p, ctx, min_age=NOW).orphans == 0
        report = collect_garbage(p, ctx, min_age=NOW, orphan_min_age=NOW)
        assert report.orphans == 1 and report.orphan_bytes > len(b"a crashed write's")  # sealed: bigger
        assert objects(p) == live and orphan.object_name not in objects(p)
    finally:
        p.close()


# -- objects no blob row names: a crashed write's, a failed delete's -----------------------------------------
def age(p: Platform, names: Iterable[str], days: float = 2) -> None:
    """Make objects of a file store look ``days`` old."""
    then = time.time() - days * 86400
    for name in names:
        os.utime(p.artifacts.backend.root / name, (then, then))  # type: ignore[attr-defined]


def test_objects_no_row_names_are_deleted_once_older_than_the_orphan_age(
    plat: Platform, tmp_path: Path
) -> None:
    ctx = plat.context()
    tree = write(tmp_path / "tree", {"a.txt": b"alpha\n", "big.bin": os.urandom(5 << 20)})
    data.add_version(plat, ctx, tree, "ds")
    live = objects(plat)
    # Writes that died after uploading, before recording: a dataset add (its manifest, a pack of small
    # files, a big file) and a single object.
    from modelyard.data import _versions

    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed")  # nothing after the upload runs, as with SIGKILL

    with pytest.MonkeyPatch.context() as m:
        m.setattr(_versions, "_record", crash)
        with pytest.raises(SystemExit):
            data.add_version(
                plat,
                ctx,
                write(tmp_path / "t2", {"x.txt": b"x", "w.txt": b"w", "y.bin": os.urandom(5 << 20)}),
                "ds",
            )
    store = plat.artifacts
    lone = store.stage(io.BytesIO(os.urandom(7000)), region=store.region)
    orphans = objects(plat) - live
    assert len(orphans) == 4 and lone.object_name in orphans and any("/pk/" in n for n in orphans)
    store.backend.write_bytes("objects/notes.txt", b"not a name the store makes")
    before = rows(plat)

    report = collect_garbage(plat, ctx, min_age=NOW)
    assert report.orphans == 0 and objects(plat) == live | orphans | {
        "objects/notes.txt"
    }  # younger than 24 h
    age(plat, live | orphans | {"objects/notes.txt"})
    dry = collect_garbage(plat, ctx, dry_run=True)
    sizes = {n: (store.backend.root / n).stat().st_size for n in orphans}  # type: ignore[attr-defined]
    assert (dry.orphans, dry.orphan_bytes) == (4, sum(sizes.values()))
    assert objects(plat) == live | orphans | {"objects/notes.txt"}

    report = collect_garbage(plat, ctx)
    assert (report.blobs, report.orphans, report.orphan_bytes, report.failed_objects) == (
        0,
        4,
        sum(sizes.values()),
        0,
    )
    assert objects(plat) == live | {"objects/notes.txt"} and rows(plat) == before
    data.checkout(plat, ctx, "ds@1", tmp_path / "out")
    assert same_tree(tmp_path / "out", tree)
    entry = [r for r in list_records(plat, ctx) if r["action"] == "artifact.gc"][-1]
    assert entry["outcome"] == "ok" and entry["detail"]["orphans"] == 4
    assert entry["detail"]["orphan_min_age_s"] == 24 * 3600
    with pytest.raises(UsageError, match="min_age"):
        collect_garbage(plat, ctx, orphan_min_age=timedelta(hours=-1))


def test_a_write_whose_uploads_were_swept_as_orphans_records_nothing(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow write's objects are orphans until it records them; a collection that swept them is seen by the
    write's fence, which then checks its objects before it records anything."""
    from modelyard.data import _versions

    ctx = plat.context()
    tree = write(tmp_path / "tree", {"a.txt": b"alpha\n", "big.bin": os.urandom(3 << 20)})
    real_record = _versions._record
    swept: list[int] = []

    def sweep_then_record(*args: object, **kwargs: object) -> object:
        if not swept:  # uploaded, not recorded: its objects are orphans now
            swept.append(collect_garbage(plat, plat.context(), min_age=NOW, orphan_min_age=NOW).orphans)
        return real_record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_versions, "_record", sweep_then_record)
    with pytest.raises(CollectedMeanwhileError, match="run it again"):
        data.add_version(plat, ctx, tree, "ds")
    assert swept == [2]  # the manifest, and the pack of both files
    assert rows(plat) == {}
    with pytest.raises(NotFoundError):
        data.show(plat, ctx, "ds@1")
    monkeypatch.setattr(_versions, "_record", real_record)
    info = data.add_version(plat, ctx, tree, "ds")
    data.checkout(plat, ctx, f"ds@{info.version}", tmp_path / "out")
    assert same_tree(tmp_path / "out", tree)

    src = write(tmp_path, {"w.bin": os.urandom(2000)}) / "w.bin"
    ran = collect_after(plat.artifacts, "stage_files", plat, monkeypatch, orphans=True)
    with pytest.raises(CollectedMeanwhileError, match="run it again"):
        put_artifact(plat, ctx, src)
    assert ran == [1]
    ran = collect_after(plat.artifacts, "stage", plat, monkeypatch, orphans=True)
    with pytest.raises(CollectedMeanwhileError, match="run it again"):
        plat.artifacts.put(io.BytesIO(b"a manifest, a checkpoint"))
    assert ran == [1]
    assert objects(plat) == set(rows(plat).values())  # no row without its object


def test_an_orphan_claimed_before_the_collection_condemns_it_is_kept(plat: Platform) -> None:
    ctx = plat.context()
    store = plat.artifacts
    since = generation(plat)
    staged = store.stage(io.BytesIO(b"uploaded long ago by a slow writer"), region=store.region)
    age(plat, [staged.object_name])
    done: list[GcReport] = []
    with plat.db.write() as s:
        assert fence(s, since) is False
        collector = threading.Thread(target=lambda: done.append(collect_garbage(plat, ctx, min_age=NOW)))
        collector.start()
        collector.join(1.0)
        assert collector.is_alive() and not done  # listed it as an orphan; held off by the open writer
        assert store.claim(s, [staged]) == {staged.digest}
    collector.join(60)
    assert done and done[0].orphans == 0  # its re-check, under the lock, saw the claim
    assert b"".join(store.iter_bytes(staged.digest)) == b"uploaded long ago by a slow writer"


def test_a_claim_while_condemned_objects_are_being_deleted_records_nothing(
    plat: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector holds no lock while it deletes (its database session may even be gone): what stops a
    slow writer is the condemnation, committed before the first delete."""
    store = plat.artifacts
    since = generation(plat)
    staged = store.stage(io.BytesIO(b"uploaded long ago by a slow writer"), region=store.region)
    age(plat, [staged.object_name])
    real = _gc._delete_objects
    outcome: list[str] = []

    def claim_then_delete(platform: Platform, names: Sequence[str]) -> tuple[int, int]:
        try:
            with plat.db.write() as s:  # not blocked: the collection's transaction has ended
                store.claim(s, [staged], collected=fence(s, since))
            outcome.append("claimed")
        except CollectedMeanwhileError as exc:
            outcome.append(exc.code)
        return real(platform, names)

    monkeypatch.setattr(_gc, "_delete_objects", claim_then_delete)
    report = collect_garbage(plat, plat.context(), min_age=NOW)
    assert outcome == ["collected_meanwhile"] and report.orphans == 1
    assert rows(plat) == {} and objects(plat) == set()
    with plat.db.read() as s:  # kept: a writer still later must find it too
        assert s.scalars(select(CondemnedObject.name)).all() == [staged.object_name]


# -- repacking: packs of small files that are mostly dead ----------------------------------------------------
def packs(p: Platform) -> dict[str, float]:
    """pack object -> the fraction of its bytes that live blobs fill."""
    backend = p.artifacts.backend
    sizes = {i.name: i.size for i in backend.list_stat("objects/pk/")}
    with p.db.read() as s:
        used = s.execute(
            select(Blob.object_name, Blob.pack_length).where(Blob.pack_offset.is_not(None))
        ).all()
    live = dict.fromkeys(sizes, 0)
    for name, length in used:
        live[name] += length
    return {name: live[name] / sizes[name] for name in sizes}


def two_versions(p: Platform, tmp_path: Path, name: str = "ds") -> tuple[Path, dict[str, str]]:
    """NAME@1: twenty small files (packed); NAME@2 keeps three of them. Returns NAME@2's tree and the row
    objects."""
    ctx = p.context()
    tree = write(tmp_path / name, {f"f{i:02d}.bin": os.urandom(10_000) for i in range(20)})
    data.add_version(p, ctx, tree, name)
    write(tree, {f"f{i:02d}.bin": os.urandom(9_000) for i in range(3, 20)})
    data.add_version(p, ctx, tree, name)
    return tree, rows(p)


def test_mostly_dead_packs_are_rewritten_with_their_live_blobs_only(plat: Platform, tmp_path: Path) -> None:
    ctx = plat.context()
    tree, before = two_versions(plat, tmp_path)
    data.remove(plat, ctx, "ds@1")
    assert collect_garbage(plat, ctx, min_age=NOW, repack_below=0).repacked == 0  # 0: never
    sparse = {name for name, fill in packs(plat).items() if fill < 0.5}
    assert sparse and all("/pk/" in name for name in sparse)  # ds@1's pack: 3 of its 20 files live
    total = sum(i.size for i in plat.artifacts.backend.list_stat("objects/pk/"))
    dead = sum(
        i.size * (1 - packs(plat)[i.name])
        for i in plat.artifacts.backend.list_stat("objects/pk/")
        if i.name in sparse
    )
    dry = collect_garbage(plat, ctx, min_age=NOW, dry_run=True)
    assert (dry.repacked, dry.repacked_bytes) == (len(sparse), round(dead))
    assert sparse <= set(packs(plat))

    with plat.db.read() as s:
        live = sorted(
            s.execute(
                select(Blob.object_name, Blob.pack_offset, Blob.pack_length).where(
                    Blob.object_name.in_(sparse)
                )
            ).all()
        )
    runs = sum(
        1 for i, (n, o, _) in enumerate(live) if i == 0 or live[i - 1][0] != n or sum(live[i - 1][1:]) != o
    )
    reads: list[str] = []
    real_open_range = plat.artifacts.backend.open_range

    def counted(name: str, offset: int, length: int) -> object:
        reads.append(name)
        return real_open_range(name, offset, length)

    since = generation(plat)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(plat.artifacts.backend, "open_range", counted)
        report = collect_garbage(plat, ctx, min_age=NOW)
    assert generation(plat) == since  # writers running meanwhile keep their fast path
    assert report.repacked == len(sparse) and report.failed_objects == 0
    assert len([r for r in reads if r in sparse]) == runs < len(live)  # blobs end to end: one read
    after = rows(plat)
    moved = {d for d in after if after[d] != before.get(d, after[d])}
    assert len(moved) == 3 and not sparse & set(packs(plat))  # the three files ds@2 kept, in a new pack
    assert all(fill >= 0.5 for fill in packs(plat).values())
    assert (
        sum(i.size for i in plat.artifacts.backend.list_stat("objects/pk/")) == total - report.repacked_bytes
    )
    assert objects(plat) == set(after.values())  # no row without its object, no object without a row
    data.checkout(plat, ctx, "ds@2", tmp_path / "out")
    assert same_tree(tmp_path / "out", tree)
    entry = [r for r in list_records(plat, ctx) if r["action"] == "artifact.gc"][-1]
    assert entry["outcome"] == "ok" and entry["detail"]["repacked"] == len(sparse)
    assert entry["detail"]["repacked_bytes"] == report.repacked_bytes
    with plat.db.read() as s:  # a writer still holding one of the old packs' names finds it condemned
        assert sparse <= set(s.scalars(select(CondemnedObject.name)))
    assert collect_garbage(plat, ctx, min_age=NOW).repacked == 0  # the new pack is all live
    # Several sparse packs: new packs of at most _REPACK_BLOBS blobs (and _REPACK_TARGET bytes) each.
    trees = [two_versions(plat, tmp_path, name)[0] for name in ("x", "y", "z")]
    for name in ("x", "y", "z"):
        data.remove(plat, ctx, f"{name}@1")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_gc, "_REPACK_BLOBS", 6)
        collect_garbage(plat, ctx, min_age=NOW, repack_below=0)
        old = set(packs(plat))
        assert collect_garbage(plat, ctx, min_age=NOW).repacked == 3
    assert len(set(packs(plat)) - old) == 2  # 3 + 3 blobs, then 3
    for name, t in zip(("x", "y", "z"), trees, strict=True):
        data.checkout(plat, ctx, f"{name}@2", tmp_path / f"out-{name}")
        assert same_tree(tmp_path / f"out-{name}", t)
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(UsageError, match="repack_below must be a fraction from 0 to 1"):
            collect_garbage(plat, ctx, repack_below=bad)  # type: ignore[arg-type]


def test_a_reader_that_located_a_blob_in_a_pack_since_rewritten_reads_the_new_one(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = plat.context()
    tree, _ = two_versions(plat, tmp_path)
    data.remove(plat, ctx, "ds@1")
    collect_garbage(plat, ctx, min_age=NOW, repack_below=0)
    store = plat.artifacts
    real = store._locate
    ran: list[GcReport] = []

    def locate_then_repack(digests: Sequence[str]) -> object:
        found = real(digests)
        if len(digests) > 1 and not ran:  # the checkout's batch: located, not read yet
            monkeypatch.setattr(store, "_locate", real)
            ran.append(collect_garbage(plat, ctx, min_age=NOW))
        return found

    monkeypatch.setattr(store, "_locate", locate_then_repack)
    data.checkout(plat, ctx, "ds@2", tmp_path / "out")
    assert ran and ran[0].repacked == 1
    assert same_tree(tmp_path / "out", tree)
    # A blob deleted meanwhile is still an error, not a read of something else.
    with pytest.raises(NotFoundError):
        b"".join(store.iter_bytes("0" * 64))


def test_a_collection_skips_a_pack_another_collection_repacked_meanwhile(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = plat.context()
    trees = [two_versions(plat, tmp_path, name)[0] for name in ("x", "y")]
    for name in ("x", "y"):
        data.remove(plat, ctx, f"{name}@1")
    collect_garbage(plat, ctx, min_age=NOW, repack_below=0)
    backend = plat.artifacts.backend
    real = backend.open_range
    other: list[GcReport] = []

    def open_range(name: str, offset: int, length: int) -> object:
        if not other:  # another `yard gc`, between this one's listing and its first read
            other.append(GcReport(False, 0, 0, 0, 0, 0, 0))
            other[0] = collect_garbage(plat, ctx, min_age=NOW)
        return real(name, offset, length)

    monkeypatch.setattr(backend, "open_range", open_range)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_gc, "_REPACK_BLOBS", 3)  # one group per pack: the other collection takes both
        report = collect_garbage(plat, ctx, min_age=NOW)
    assert other[0].repacked == 2 and report.repacked == 0 and report.failed_objects == 0
    assert objects(plat) == set(rows(plat).values())  # its new pack held nothing and went
    for name, tree in zip(("x", "y"), trees, strict=True):
        data.checkout(plat, ctx, f"{name}@2", tmp_path / f"out-{name}")
        assert same_tree(tmp_path / f"out-{name}", tree)


def test_a_failed_write_of_the_new_pack_abandons_the_whole_repack(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging writer reports a failed write late, during a later write (its buffers go to disk on a
    thread): the bytes lost may be an earlier pack's, so no pack may be moved, not only the one being
    copied when the error came."""
    ctx = plat.context()
    trees = [two_versions(plat, tmp_path, name)[0] for name in ("x", "y")]
    for name in ("x", "y"):
        data.remove(plat, ctx, f"{name}@1")
    collect_garbage(plat, ctx, min_age=NOW, repack_below=0)
    before, store = rows(plat), plat.artifacts
    real = store._staging_file

    def failing_staging(prefix: str) -> tuple[object, Path]:
        out, path = real(prefix)
        writes = [0]
        plain_write = out.write

        def write(data: bytes) -> int:
            writes[0] += 1
            if writes[0] > 3:  # the first pack's three blobs went to a full disk: reported now
                raise OSError(28, "No space left on device")
            return plain_write(bytes(len(data)))  # what reached the disk

        out.write = write  # type: ignore[method-assign]
        return out, path

    monkeypatch.setattr(store, "_staging_file", failing_staging)
    with pytest.raises(OSError, match="No space left"):
        collect_garbage(plat, ctx, min_age=NOW)
    assert rows(plat) == before and objects(plat) == set(before.values())  # nothing moved, nothing deleted
    monkeypatch.setattr(store, "_staging_file", real)
    for name, tree in zip(("x", "y"), trees, strict=True):
        data.checkout(plat, ctx, f"{name}@2", tmp_path / f"out-{name}")
        assert same_tree(tmp_path / f"out-{name}", tree)
    assert not list(plat.artifacts.backend.staging_dir().glob(".repack-*"))  # its temp file went too


def test_a_reader_whose_blob_was_collected_and_stored_again_reads_the_new_copy(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Located in a pack; meanwhile the blob is collected (pack gone) and the same bytes stored again under
    a new key: the reader follows the row it opened, key included."""
    ctx = plat.context()
    tree = write(tmp_path / "t", {f"{i}.txt": f"file {i}\n".encode() for i in range(3)})
    data.add_version(plat, ctx, tree, "k")
    store = plat.artifacts
    real = store._locate

    def locate_then_collect(digests: Sequence[str]) -> object:
        found = real(digests)
        if len(digests) > 1:
            monkeypatch.setattr(store, "_locate", real)
            data.remove(plat, ctx, "k@1")
            collect_garbage(plat, ctx, min_age=NOW)
            data.add_version(plat, ctx, tree, "again")  # new rows: new pack, new keys
        return found

    monkeypatch.setattr(store, "_locate", locate_then_collect)
    data.checkout(plat, ctx, "k@1", tmp_path / "out")
    assert same_tree(tmp_path / "out", tree)


def test_a_repack_whose_new_pack_another_collection_condemned_changes_nothing(
    plat: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repacking writes its new pack as a writer does: a collection that ran meanwhile may have swept it as
    an orphan (no row named it yet), so the repack must not move rows into it."""
    ctx = plat.context()
    tree, _ = two_versions(plat, tmp_path)
    data.remove(plat, ctx, "ds@1")
    collect_garbage(plat, ctx, min_age=NOW, repack_below=0)
    before = rows(plat)
    backend = plat.artifacts.backend
    real = backend.put_file
    swept: list[int] = []

    def publish_then_sweep(name: str, path: Path, **kwargs: object) -> None:
        real(name, path, **kwargs)  # type: ignore[arg-type]
        if "/pk/" in name and not swept:
            swept.append(collect_garbage(plat, ctx, min_age=NOW, orphan_min_age=NOW, repack_below=0).orphans)

    monkeypatch.setattr(backend, "put_file", publish_then_sweep)
    with pytest.raises(CollectedMeanwhileError, match="repacking"):
        collect_garbage(plat, ctx, min_age=NOW)
    assert swept == [1]
    assert rows(plat) == before and objects(plat) == set(before.values())  # the old pack still holds them
    monkeypatch.setattr(backend, "put_file", real)
    assert collect_garbage(plat, ctx, min_age=NOW).repacked == 1
    data.checkout(plat, ctx, "ds@2", tmp_path / "out")
    assert same_tree(tmp_path / "out", tree)


@pytest.mark.s3
def test_repacking_on_an_s3_store(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    p = make_platform(tmp_path / "home", artifact_uri=f"s3://{s3_bucket}/yard", s3_endpoint_url=s3_endpoint)
    try:
        ctx = p.context()
        tree, before = two_versions(p, tmp_path)
        data.remove(p, ctx, "ds@1")
        report = collect_garbage(p, ctx, min_age=NOW)  # ranged reads of the old pack, a new one uploaded
        assert report.repacked == 1 and report.repacked_bytes > 17 * 10_000 and report.failed_objects == 0
        after = rows(p)
        assert (
            objects(p) == set(after.values()) and len({after[d] for d in after} - set(before.values())) == 1
        )
        data.checkout(p, ctx, "ds@2", tmp_path / "out")
        assert same_tree(tmp_path / "out", tree)
    finally:
        p.close()


def test_gc_removes_what_interrupted_writes_left_in_staging_once_a_day_old(plat: Platform) -> None:
    staging = plat.artifacts.backend.staging_dir()
    then = time.time() - 2 * 86400

    def left(rel: str, old: bool = True) -> Path:
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
        if old:
            os.utime(path, (then, then))
        return path

    left("tmpk2j3.tmp")  # a put killed before it published
    left("data-add-x1/spill")  # a dataset add killed mid-way: its work directory
    left("data-add-x1/manifest.tmp")
    os.utime(staging / "data-add-x1", (then, then))
    fresh = left("tmpfresh.tmp", old=False)  # a live writer's
    live = [left("data-add-x2/spill"), left("data-add-x2/manifest.tmp", old=False)]  # still being written
    assert collect_garbage(plat, plat.context(), dry_run=True).staging == 0
    assert len(list(staging.iterdir())) == 4
    report = collect_garbage(plat, plat.context())
    assert report.staging == 2
    assert sorted(p.name for p in staging.iterdir()) == ["data-add-x2", "tmpfresh.tmp"]
    assert fresh.exists() and all(p.exists() for p in live)


@pytest.mark.s3
def test_gc_aborts_the_unfinished_uploads_of_killed_writes_on_s3(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    """A write killed mid-upload leaves a multipart upload whose parts are stored (and billed) but never
    listed as an object, so the orphan sweep never saw them; gc aborts those as old as orphans."""
    import boto3

    p = make_platform(tmp_path / "home", artifact_uri=f"s3://{s3_bucket}/yard", s3_endpoint_url=s3_endpoint)
    try:
        ctx = p.context()
        client = boto3.client("s3", endpoint_url=s3_endpoint)
        key = f"yard/objects/ab/{'ab' * 32}.{'0' * 32}"
        upload = client.create_multipart_upload(Bucket=s3_bucket, Key=key)
        client.upload_part(
            Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=os.urandom(1 << 20)
        )
        other = client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/notes.txt")  # not ours

        def pending() -> set[str]:
            return {u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])}

        assert collect_garbage(p, ctx, min_age=NOW, orphan_min_age=NOW, dry_run=True).uploads == 1
        assert pending() == {key, "elsewhere/notes.txt"}
        report = collect_garbage(p, ctx, min_age=NOW, orphan_min_age=NOW)
        assert (report.uploads, report.failed_objects) == (1, 0)
        assert pending() == {"elsewhere/notes.txt"}
        assert collect_garbage(p, ctx, min_age=NOW, orphan_min_age=NOW).uploads == 0
        client.abort_multipart_upload(Bucket=s3_bucket, Key="elsewhere/notes.txt", UploadId=other["UploadId"])
    finally:
        p.close()


@pytest.mark.s3
def test_gc_removes_the_staging_directories_killed_processes_left_for_an_s3_store(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 store stages in a temp directory per process, removed only at a clean exit; gc swept only the
    current process's (new, empty) one, so a killed upload's sealed files stayed for good."""
    import tempfile

    from modelyard.core._blobs import S3_STAGING_PREFIX

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    p = make_platform(tmp_path / "home", artifact_uri=f"s3://{s3_bucket}/yard", s3_endpoint_url=s3_endpoint)
    try:
        killed, busy = temp / f"{S3_STAGING_PREFIX}killed", temp / f"{S3_STAGING_PREFIX}busy"
        for folder in (killed, busy):
            folder.mkdir()
            (folder / ".put-x").write_bytes(b"sealed bytes")
        old = time.time() - 2 * 86400
        for path in (killed / ".put-x", killed, busy):  # busy's file is fresh: a live upload
            os.utime(path, (old, old))
        elsewhere = tmp_path / "not-staging"
        elsewhere.mkdir()
        os.utime(elsewhere, (old, old))
        (temp / f"{S3_STAGING_PREFIX}link").symlink_to(elsewhere)
        report = collect_garbage(p, p.context(), min_age=NOW)
        assert report.staging == 1
        assert not killed.exists() and busy.exists() and elsewhere.exists()
        ours = p.artifacts.backend.staging_dir()
        os.utime(ours, (old, old))  # this process's own, idle for a day: swept, and made again on use
        assert collect_garbage(p, p.context(), min_age=NOW).staging == 1
        put_artifact(p, p.context(), write(tmp_path / "t", {"f.txt": b"after"}) / "f.txt")
    finally:
        p.close()
