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
