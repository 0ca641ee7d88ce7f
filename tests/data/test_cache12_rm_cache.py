"""`remove` also deletes this home's cached copy of the version that `get` made (plain text, perhaps PII)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.errors import NotFoundError
from modelyard.testing import Yard

MakeTree = Callable[[Path, dict[str, bytes]], Path]
MARKER = b"PII-MARKER jane.doe@example.com"


def _two_cached_versions(platform: Platform, tmp_path: Path, make_tree: MakeTree) -> tuple[Path, Path]:
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "v1", {"people.txt": MARKER}), "ds")
    data.add_version(platform, ctx, make_tree(tmp_path / "v2", {"people.txt": b"anonymised"}), "ds")
    return data.get("ds@1", platform=platform, ctx=ctx), data.get("ds@2", platform=platform, ctx=ctx)


def test_remove_deletes_the_cached_copy_and_leaves_other_versions(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    ctx = platform.context()
    v1, v2 = _two_cached_versions(platform, tmp_path, make_tree)
    assert (v1 / "people.txt").read_bytes() == MARKER

    info = data.remove(platform, ctx, "ds@1")

    assert info.warnings == ()
    assert not v1.exists() and not v1.is_symlink()
    assert (v2 / "people.txt").read_bytes() == b"anonymised"
    assert data.get("ds@2", platform=platform, ctx=ctx) == v2
    with pytest.raises(NotFoundError):
        data.get("ds@1", platform=platform, ctx=ctx)
    assert not v1.exists()


def test_remove_of_a_version_never_fetched_creates_nothing_in_the_cache(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "v1", {"people.txt": MARKER}), "ds")
    assert data.remove(platform, ctx, "ds@1").warnings == ()
    assert not (platform.settings.home / "cache" / "data").exists()


def test_a_copy_that_cannot_be_deleted_is_a_warning_and_the_removal_stands(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    ctx = platform.context()
    v1, _ = _two_cached_versions(platform, tmp_path, make_tree)
    (v1.parent / ".ds@1.lock").unlink()
    (v1.parent / ".ds@1.lock").mkdir()  # the lock cannot be opened, so the copy is not touched

    info = data.remove(platform, ctx, "ds@1")

    assert len(info.warnings) == 1 and str(v1) in info.warnings[0]
    assert (v1 / "people.txt").read_bytes() == MARKER
    with pytest.raises(NotFoundError):
        data.show(platform, ctx, "ds@1")


def test_yard_data_rm_deletes_the_copy_and_prints_why_it_could_not(
    platform: Platform, yard: Yard, tmp_path: Path, make_tree: MakeTree
) -> None:
    v1, v2 = _two_cached_versions(platform, tmp_path, make_tree)
    (v2.parent / ".ds@2.lock").unlink()
    (v2.parent / ".ds@2.lock").mkdir()

    ok = yard("data", "rm", "ds@1")
    assert (ok.code, ok.err) == (0, "") and "removed ds@1" in ok.out
    assert not v1.exists()

    kept = yard("data", "rm", "ds@2")
    assert kept.code == 0 and "removed ds@2" in kept.out
    assert "warning: could not delete the cached copy" in kept.err and str(v2) in kept.err
