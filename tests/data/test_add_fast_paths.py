"""The fast paths of a dataset add keep the formats and checks of the slow ones: manifest lines are
byte-identical to json.dumps, claimed rows hold what the ORM writes, the stat cache's range lookup
matches only its own files, and a file changed while it is read fails the add with nothing left."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text

from modelyard import data
from modelyard.core import Platform
from modelyard.core._models import Blob
from modelyard.data import _manifest
from modelyard.errors import UsageError


@pytest.mark.parametrize(
    "name",
    [
        "a.txt",
        'quo"te.bin',
        "back\\slash",
        "tab\there",
        "caf\u00e9/\u6a21\u578b.bin",
        "emoji-\U0001f600",
        "\x7f",
    ],
)
def test_manifest_lines_are_what_json_dumps_writes(name: str) -> None:
    entry = _manifest.Entry(name, "/x", 12345, 0, 0, 0, "ab" * 32)
    expected = json.dumps({"path": name, "size": 12345, "sha256": "ab" * 32}, ensure_ascii=False) + "\n"
    assert _manifest.line(entry) == expected.encode()


def test_claimed_rows_hold_what_the_orm_writes(platform: Platform, tree: Path) -> None:
    data.add_version(platform, platform.context(), tree, "ds")
    with platform.db.read() as s:
        raw = [r[0] for r in s.execute(text("SELECT created_at FROM blobs"))]
        rows = s.scalars(select(Blob)).all()
    assert raw and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", v) for v in raw), raw
    assert all(isinstance(b.created_at, datetime) for b in rows)


def test_stat_cache_range_lookup_matches_only_its_entries(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for name in ["a/1", "a/2", "b/3", "c"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    with _manifest.StatCache(tmp_path / "stat.db") as cache:
        entries = list(_manifest.walk(root))
        assert len(cache.fill(entries)) == 4
        read_from = time.time_ns()
        for e in entries:
            e.sha256 = _manifest.hash_file(e.path)[0]
        cache.store(entries, read_from)
        (root / "a" / "2").unlink()  # its row stays in the cache, inside the next lookup's range
        (root / "b" / "3").write_text("changed!")
        again = list(_manifest.walk(root))
        missing = cache.fill(list(reversed(again)))  # order does not matter
        assert [e.name for e in missing] == ["b/3"]
        assert {e.name for e in again if e.sha256} == {"a/1", "c"}


def test_a_file_changed_while_read_fails_the_add_and_leaves_nothing(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = platform.artifacts
    real = store.publish_files

    def publish(paths, *, region, expect=None):  # type: ignore[no-untyped-def]
        # The file grows after the walk saw it: its descriptor's stat differs once it was read.
        with open(paths[0], "ab") as f:
            f.write(b"more")
        return real(paths, region=region, expect=expect)

    monkeypatch.setattr(store, "publish_files", publish)
    with pytest.raises(UsageError, match="changed while it was being read"):
        data.add_version(platform, platform.context(), tree, "ds")
    monkeypatch.undo()
    assert list(store.backend.list("objects/")) == []
    staging = store.backend.staging_dir()
    assert [p for p in staging.rglob("*") if p.is_file()] == []


def test_publish_files_checks_the_stat_it_is_given(platform: Platform, tmp_path: Path) -> None:
    store = platform.artifacts
    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(100 + i))
        paths.append(str(p))
    stats = [os.stat(p) for p in paths]
    expect = [(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for st in stats]
    assert len(store.publish_files(paths, region=store.region, expect=expect)) == 3
    expect[1] = (expect[1][0], expect[1][1] - 1, expect[1][2], expect[1][3])
    before = set(store.backend.list("objects/"))
    with pytest.raises(UsageError, match="changed while it was being read"):
        store.publish_files(paths, region=store.region, expect=expect)
    assert set(store.backend.list("objects/")) == before


def test_a_failed_flush_records_nothing_leaves_nothing_and_is_audited(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The add's one flush (its files and its manifest) fails: no version, no blob rows, no objects, and
    the refusal is in the audit log."""
    from modelyard.core import list_records
    from modelyard.errors import BackendError

    store = platform.artifacts

    def broken_sync() -> None:
        raise BackendError("file store: cannot sync '.': No space left on device")

    monkeypatch.setattr(store.backend, "sync", broken_sync)
    with pytest.raises(BackendError, match="No space left"):
        data.add_version(platform, platform.context(), tree, "ds")
    monkeypatch.undo()
    with platform.db.read() as s:
        assert s.scalars(select(Blob)).all() == []
    assert list(store.backend.list("objects/")) == []
    rec = list_records(platform, platform.context())[-1]
    assert rec["action"] == "dataset.write" and rec["outcome"] == "refused"
