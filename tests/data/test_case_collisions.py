"""A version holding names that differ only in case, checked out onto a case-insensitive filesystem (macOS,
Windows), would silently hold one file where the version has two. This filesystem is case-sensitive, so the
probe is replaced to test the refusal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.data import _versions
from modelyard.errors import UsageError
from modelyard.testing import same_tree

MakeTree = Callable[[Path, dict[str, bytes]], Path]


def test_the_probe_finds_this_filesystem_case_sensitive_and_leaves_nothing(tmp_path: Path) -> None:
    assert _versions._case_insensitive(tmp_path) is False
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "files",
    [
        {"A.txt": b"upper", "a.txt": b"lower"},
        {"Sub/x.txt": b"x", "sub/y.txt": b"y"},  # two directories that would be one
        {"README": b"file", "readme/x": b"a directory of the same name"},
    ],
)
def test_names_equal_but_for_case_are_refused_on_a_case_insensitive_filesystem(
    platform: Platform,
    tmp_path: Path,
    make_tree: MakeTree,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes],
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "t", files), "ds")
    monkeypatch.setattr(_versions, "_case_insensitive", lambda directory: True)
    dest = tmp_path / "out"
    with pytest.raises(UsageError, match="case-insensitive"):
        data.checkout(platform, ctx, "ds@1", dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_a_version_without_such_names_checks_out_on_a_case_insensitive_filesystem(
    platform: Platform, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    monkeypatch.setattr(_versions, "_case_insensitive", lambda directory: True)
    data.checkout(platform, ctx, "ds@1", tmp_path / "out")
    assert same_tree(tmp_path / "out", tree)


def test_names_equal_but_for_case_check_out_on_a_case_sensitive_filesystem(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    ctx = platform.context()
    root = make_tree(tmp_path / "t", {"A.txt": b"upper", "a.txt": b"lower"})
    data.add_version(platform, ctx, root, "ds")
    data.checkout(platform, ctx, "ds@1", tmp_path / "out")
    assert same_tree(tmp_path / "out", root)


# Case-insensitive filesystems do not all fold case alike. NTFS (an upper-case table, one character to one)
# and HFS+ fold simply: "Straße" and "STRASSE" are two names there. APFS and ext4's casefold fold fully
# (Unicode CaseFolding.txt C+F; linux-apfs-rw builds its tables so to match Apple's name hashes): "ß" is "ss".
# Checkout probes which one the destination does. This filesystem is neither, so both probes are replaced.
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize(
    "files",
    [
        {"\u1e9e.txt": b"capital sharp s", "\u00df.txt": b"sharp s"},  # simple folding: U+1E9E -> U+00DF
        {"\u03a3.txt": b"capital sigma", "\u03c2.txt": b"final sigma"},  # both fold to U+03C3
        {"d/\u01c5": b"titlecase dz with caron", "D/\u01c6": b"small"},  # U+01C5 -> U+01C6
    ],
)
def test_names_simple_case_folding_merges_are_refused_wherever_case_is_ignored(
    platform: Platform,
    tmp_path: Path,
    make_tree: MakeTree,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes],
    full: bool,
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "t", files), "ds")
    monkeypatch.setattr(_versions, "_case_insensitive", lambda directory: True)
    monkeypatch.setattr(_versions, "_folds_fully", lambda directory: full)
    with pytest.raises(UsageError, match="case-insensitive"):
        data.checkout(platform, ctx, "ds@1", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sharp_s_and_ss_check_out_where_case_folding_is_simple(
    platform: Platform, tmp_path: Path, make_tree: MakeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was refused (str.casefold is full folding) on NTFS and HFS+, where the two are different names."""
    ctx = platform.context()
    root = make_tree(tmp_path / "t", {"Stra\u00dfe.txt": b"sharp s", "STRASSE.txt": b"ss", "\ufb01le": b"fi"})
    (root / "file").write_bytes(b"f, i")  # U+FB01 (the fi ligature) folds fully to "fi", simply to itself
    data.add_version(platform, ctx, root, "ds")
    monkeypatch.setattr(_versions, "_case_insensitive", lambda directory: True)
    assert _versions._folds_fully(tmp_path) is False  # the real probe; this filesystem keeps ß and ss apart
    data.checkout(platform, ctx, "ds@1", tmp_path / "out")
    assert same_tree(tmp_path / "out", root)
    assert list(tmp_path.glob(".yard-*")) == []  # the probes left nothing


@pytest.mark.parametrize(
    "files",
    [
        {"Stra\u00dfe.txt": b"sharp s", "STRASSE.txt": b"ss"},
        {"\ufb01le": b"ligature", "FILE": b"f, i"},
    ],
)
def test_sharp_s_and_ss_are_refused_where_case_folding_is_full(
    platform: Platform,
    tmp_path: Path,
    make_tree: MakeTree,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes],
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "t", files), "ds")
    monkeypatch.setattr(_versions, "_case_insensitive", lambda directory: True)
    monkeypatch.setattr(_versions, "_folds_fully", lambda directory: True)
    with pytest.raises(UsageError, match="case-insensitive"):
        data.checkout(platform, ctx, "ds@1", tmp_path / "out")
    assert not (tmp_path / "out").exists()
