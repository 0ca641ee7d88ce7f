"""Dataset versions through the services: add, diff, checkout, integrity, stat cache, profile, get."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from modelyard import data
from modelyard.core import Platform
from modelyard.core._models import Blob, DatasetVersion
from modelyard.data import _manifest, _profile
from modelyard.errors import IntegrityError, NotFoundError, UsageError
from modelyard.testing import Yard, same_tree

MakeTree = Callable[[Path, dict[str, bytes]], Path]


def test_add_modify_add_diff_lists_exactly_that_file_and_checkouts_reproduce_both(
    platform: Platform, tree: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    v1 = data.add_version(platform, ctx, tree, "reviews", message="first")
    snapshot = tmp_path / "snapshot-v1"
    shutil.copytree(tree, snapshot)
    (tree / "sub" / "c.bin").write_bytes(os.urandom(123))
    v2 = data.add_version(platform, ctx, tree, "reviews", message="second")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.files == v2.files == 6 and v1.message == "first"

    d = data.diff(platform, ctx, "reviews@1", "reviews@2")
    assert [x.path for x, _ in d.changed] == ["sub/c.bin"]
    assert d.added == [] and d.removed == []
    assert d.changed[0][1].size == 123

    data.checkout(platform, ctx, "reviews@1", tmp_path / "out1")
    data.checkout(platform, ctx, "reviews@2", tmp_path / "out2")
    assert same_tree(tmp_path / "out1", snapshot)
    assert same_tree(tmp_path / "out2", tree)


def test_diff_reports_added_removed_and_table_changes(platform: Platform, tree: Path) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    (tree / "a.txt").unlink()
    (tree / "new.txt").write_bytes(b"new")
    (tree / "table.csv").write_bytes(b"id,city,score,extra\n1,Paris,0.5,x\n2,Oslo,9.5,y\n")
    data.add_version(platform, ctx, tree, "ds")
    d = data.diff(platform, ctx, "ds@1", "ds@2")
    assert [m.path for m in d.added] == ["new.txt"]
    assert [m.path for m in d.removed] == ["a.txt"]
    assert [x.path for x, _ in d.changed] == ["table.csv"]
    change = d.tables["table.csv"]
    assert change["rows"] == [3, 2]
    assert change["columns_added"] == ["extra"]
    assert change["stats"]["score"]["max"] == [1.5, 9.5]
    assert json.loads(json.dumps(d.as_dict()))["added"][0]["path"] == "new.txt"


def test_diff_reports_a_table_that_lost_or_gained_its_statistics(
    platform: Platform, tree: Path, yard: Yard
) -> None:
    """A table that no longer parses (a broken export) left diff's table section silent: its schema was
    gone and only "~ table.csv" said anything had changed."""
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    (tree / "table.csv").write_bytes(b"id,city\n1,Paris,extra\n")
    data.add_version(platform, ctx, tree, "ds")
    (tree / "table.csv").write_bytes(b"id\n1\n")
    data.add_version(platform, ctx, tree, "ds")
    lost = data.diff(platform, ctx, "ds@1", "ds@2").tables["table.csv"]
    assert lost["rows"] == [3, None] and lost["columns_removed"] == []  # unknown, not removed
    assert lost["no_statistics"][0] is None and "cannot read it as csv" in lost["no_statistics"][1]
    gained = data.diff(platform, ctx, "ds@2", "ds@3").tables["table.csv"]
    assert gained["rows"] == [None, 1] and gained["no_statistics"][1] is None
    out = yard("data", "diff", "ds@1", "ds@2").out
    assert "table table.csv: no statistics in ds@2: cannot read it as csv" in out


def test_unchanged_tree_gives_no_new_version(platform: Platform, tree: Path) -> None:
    ctx = platform.context()
    v1 = data.add_version(platform, ctx, tree, "ds")
    again = data.add_version(platform, ctx, tree, "ds")
    assert again.created is False and again.version == v1.version == 1
    assert [v.version for v in data.list_versions(platform, ctx, "ds")] == [1]


def test_single_file_path_is_a_one_member_version(platform: Platform, tree: Path, tmp_path: Path) -> None:
    ctx = platform.context()
    info = data.add_version(platform, ctx, tree / "table.csv", "one")
    assert info.files == 1 and "table.csv" in info.profile["tables"]
    data.checkout(platform, ctx, "one@1", tmp_path / "out")
    assert (tmp_path / "out" / "table.csv").read_bytes() == (tree / "table.csv").read_bytes()


def _stored_object(platform: Platform, digest: str) -> tuple[Path, int]:
    """The object holding ``digest`` and the offset of the middle of its payload (small files of an add
    are packed: the blob is a byte range of a shared object)."""
    with platform.db.read() as s:
        name, offset, length = s.execute(
            select(Blob.object_name, Blob.pack_offset, Blob.pack_length).where(Blob.digest == digest)
        ).one()
    path = platform.settings.home / "artifacts" / name
    if offset is None or length is None:
        return path, path.stat().st_size // 2
    return path, offset + length // 2


def test_corrupted_blob_is_detected_at_checkout_and_nothing_is_left(
    platform: Platform, tree: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    digest = _manifest.hash_file(str(tree / "sub" / "c.bin"))[0]
    obj, middle = _stored_object(platform, digest)
    raw = bytearray(obj.read_bytes())
    raw[middle] ^= 0x01
    obj.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match=digest):
        data.checkout(platform, ctx, "ds@1", dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temp dir left
    # An empty destination directory stays empty.
    dest.mkdir()
    with pytest.raises(IntegrityError):
        data.checkout(platform, ctx, "ds@1", dest)
    assert list(dest.iterdir()) == []


def test_checkout_refuses_a_non_empty_directory(platform: Platform, tree: Path, tmp_path: Path) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        data.checkout(platform, ctx, "ds@1", dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_checkout_into_the_working_directory_fills_it_in_place(
    platform: Platform, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`yard data checkout ds@1 .` from an empty directory: the temp directory was made inside "." (so it
    was "not empty"), and replacing the directory would leave the shell in a deleted one."""
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    here = tmp_path / "empty"
    here.mkdir()
    inode = here.stat().st_ino
    monkeypatch.chdir(here)
    data.checkout(platform, ctx, "ds@1", ".")
    assert os.stat(".").st_ino == inode and same_tree(Path.cwd(), tree)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left


def test_contents_are_deduplicated_by_digest(platform: Platform, tmp_path: Path, make_tree: MakeTree) -> None:
    ctx = platform.context()
    same = os.urandom(3000)
    root = make_tree(tmp_path / "t", {f"copy{i}.bin": same for i in range(5)})
    data.add_version(platform, ctx, root, "dup")
    with platform.db.read() as s:
        blobs = s.execute(select(func.count()).select_from(Blob)).scalar_one()
    assert blobs == 2  # the content once, plus the manifest
    objects = [p for p in (platform.settings.home / "artifacts" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 2


# -- stat cache --------------------------------------------------------------------------------------------


def _hashed_by(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts of files hashed per add, read from the StatCache each add used."""
    counts: list[int] = []
    real_close = _manifest.StatCache.close

    def close(self: _manifest.StatCache) -> None:
        counts.append(self.hashed)
        real_close(self)

    monkeypatch.setattr(_manifest.StatCache, "close", close)
    return counts


def test_stat_cache_skips_unchanged_files_and_rehashes_only_touched_ones(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = platform.context()
    hashed = _hashed_by(platform, monkeypatch)
    v1 = data.add_version(platform, ctx, tree, "ds")
    assert hashed == [6]
    assert data.add_version(platform, ctx, tree, "ds").created is False
    assert hashed[-1] == 0  # nothing re-read
    st = os.stat(tree / "a.txt")
    os.utime(tree / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
    again = data.add_version(platform, ctx, tree, "ds")
    assert hashed[-1] == 1
    assert again.created is False and again.manifest_digest == v1.manifest_digest


def test_stat_cache_does_not_trust_racily_clean_files(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_manifest, "RACY_NS", 3600 * 10**9)  # every file counts as just written
    hashed = _hashed_by(platform, monkeypatch)
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    data.add_version(platform, ctx, tree, "ds")
    assert hashed == [6, 6]


def test_stat_cache_file_is_private(platform: Platform, tree: Path) -> None:
    data.add_version(platform, platform.context(), tree, "ds")
    cache = platform.settings.home / "cache" / "stat.db"
    assert cache.stat().st_mode & 0o077 == 0


def test_a_tree_below_a_non_utf8_directory_name_is_versioned_and_cached(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    """The stat cache bound the absolute path, surrogate escapes and all, as SQLite text: the add failed
    with an unexpected UnicodeEncodeError."""
    root = make_tree(tmp_path / os.fsdecode(b"caf\xe9") / "src", {"a.txt": b"hi\n"})
    ctx = platform.context()
    assert data.add_version(platform, ctx, root, "d").version == 1
    with _manifest.StatCache(platform.settings.home / "cache" / "stat.db") as cache:
        assert cache.fill(list(_manifest.walk(root))) == [] and cache.hits == 1
    data.checkout(platform, ctx, "d@1", tmp_path / "out")
    assert same_tree(tmp_path / "out", root)


# -- profile -----------------------------------------------------------------------------------------------


def test_profile_records_schema_and_statistics(platform: Platform, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "t"
    root.mkdir()
    pq.write_table(
        pa.table({"x": [1.0, 2.0, None, 4.0], "flag": [True, False, True, None], "c": ["u", "v", "u", "u"]}),
        root / "p.parquet",
    )
    (root / "rows.jsonl").write_text('{"a": 1, "b": "x"}\n{"a": 3, "b": null}\n')
    ctx = platform.context()
    data.add_version(platform, ctx, root, "ds")
    prof = data.load_profile(platform, ctx, "ds@1")
    assert prof["format"] == _profile.FORMAT
    x = prof["tables"]["p.parquet"]["columns"]["x"]
    assert x["type"] == "double" and x["nulls"] == 1 and x["count"] == 3
    assert (x["min"], x["max"]) == (1.0, 4.0) and x["mean"] == pytest.approx(7 / 3)
    assert sum(x["histogram"]["counts"]) == 3 and len(x["histogram"]["edges"]) == _profile.BINS + 1
    assert prof["tables"]["p.parquet"]["columns"]["c"]["top"][0] == ["u", 3]
    assert prof["tables"]["p.parquet"]["columns"]["flag"]["kind"] == "boolean"
    b = prof["tables"]["rows.jsonl"]["columns"]["b"]
    assert b["nulls"] == 1 and prof["tables"]["rows.jsonl"]["rows"] == 2
    # The stored text round-trips through the documented loader.
    with platform.db.read() as s:
        text = s.execute(select(DatasetVersion.profile)).scalar_one()
    assert _profile.loads(text) == prof


def test_mostly_distinct_strings_get_no_top_values(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    rows = "\n".join(f"user{i}@example.com" for i in range(50))
    root = make_tree(tmp_path / "t", {"users.csv": f"email\n{rows}\n".encode()})
    ctx = platform.context()
    data.add_version(platform, ctx, root, "ds")
    col = data.load_profile(platform, ctx, "ds")["tables"]["users.csv"]["columns"]["email"]
    assert col["distinct"] == 50 and "top" not in col


def test_malformed_tables_are_versioned_without_statistics_and_a_warning(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    root = make_tree(
        tmp_path / "t",
        {
            "bad.csv": b'a,b\n1,2\n3,4,5,6\n"unterminated\n',
            "bad.parquet": b"PAR1 not really",
            "ok.csv": b"a\n1\n",
        },
    )
    ctx = platform.context()
    info = data.add_version(platform, ctx, root, "ds")
    assert info.files == 3 and len(info.warnings) == 2
    assert set(info.profile["skipped"]) == {"bad.csv", "bad.parquet"}
    assert "ok.csv" in info.profile["tables"]
    assert all("no statistics recorded" in w for w in info.warnings)


# -- SDK get -------------------------------------------------------------------------------------------------


def test_get_checks_out_into_the_cache_and_reuses_it(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    first = data.get("ds@1", platform=platform, ctx=ctx)
    assert first == platform.settings.home / "cache" / "data" / "default" / "ds@1"
    assert same_tree(first, tree)
    marker = first.stat().st_ino
    assert data.get("ds", platform=platform, ctx=ctx) == first  # latest, reused
    assert first.stat().st_ino == marker
    (first / "a.txt").write_text("tampered")  # a changed copy is replaced by a fresh checkout
    assert (data.get("ds@1", platform=platform, ctx=ctx) / "a.txt").read_bytes() == b"alpha\n"


def test_the_cache_is_private_under_a_permissive_umask(platform: Platform, tree: Path) -> None:
    """cache/data and cache/data/PROJECT were 0777 under `umask 000` (only the version's folder was 0700)."""
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    old = os.umask(0)
    try:
        got = data.get("ds@1", platform=platform, ctx=ctx)
    finally:
        os.umask(old)
    for path in (got.parent.parent, got.parent, got):
        assert path.stat().st_mode & 0o777 == 0o700, path


def test_get_opens_the_platform_from_the_environment(platform: Platform, tree: Path) -> None:
    data.add_version(platform, platform.context(), tree, "ds")
    path = data.get("ds@1")  # YARD_HOME points at the fixture's home
    assert (path / "a.txt").read_bytes() == b"alpha\n"


def test_unknown_dataset_and_version_read_as_not_found(platform: Platform, tree: Path) -> None:
    ctx = platform.context()
    with pytest.raises(NotFoundError, match="nope"):
        data.show(platform, ctx, "nope")
    data.add_version(platform, ctx, tree, "ds")
    with pytest.raises(NotFoundError, match="version 7"):
        data.show(platform, ctx, "ds@7")


def test_a_failed_cleanup_after_the_commit_does_not_fail_the_add(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Removing unreferenced objects after the version is recorded can fail (an S3 503); the version is
    stored, so the add succeeds and says what was left behind instead of reporting a failure."""
    ctx = platform.context()
    store = platform.artifacts

    def broken_discard(*args: object, **kwargs: object) -> None:
        raise OSError("the store answered 503")

    monkeypatch.setattr(store, "discard", broken_discard)
    with caplog.at_level("WARNING", logger="modelyard.data"):
        info = data.add_version(platform, ctx, tree, "ds")
    assert info.version == 1 and data.show(platform, ctx, "ds@1").files == 6
    assert "removing unreferenced objects failed" in caplog.text
    monkeypatch.undo()
    data.checkout(platform, ctx, "ds@1", tree.parent / "out")
    assert same_tree(tree, tree.parent / "out")


def test_blobs_stored_by_someone_else_first_leave_no_orphans(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a concurrent writer causes: the add did not know these digests when it sealed them, so
    its claims lose. After the commit, the add removes its own unreferenced objects (walking its spill
    file, not a list in memory) and keeps every pack a claimed blob lives in."""
    from modelyard.core import put_artifacts

    ctx = platform.context()
    store = platform.artifacts
    put_artifacts(platform, ctx, [tree / "b.bin", tree / "sub" / "c.bin"])  # the other writer won
    monkeypatch.setattr(store, "known_digests", lambda digests: set())  # sealed as if unknown
    info = data.add_version(platform, ctx, tree, "ds")
    monkeypatch.undo()
    with platform.db.read() as s:
        referenced = set(s.scalars(select(Blob.object_name)))
    objects = {n for n in store.backend.list("objects/")}
    assert objects == referenced  # nothing orphaned, nothing referenced missing
    data.checkout(platform, ctx, f"ds@{info.version}", tree.parent / "out")
    assert same_tree(tree, tree.parent / "out")
