"""Fixtures of the dataset tests: trees of files, and no "racily clean" delay for the stat cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard.data import _manifest


@pytest.fixture(autouse=True)
def _no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files written by a test are seconds old at most; the window protects same-tick rewrites, which
    # the tests that need it exercise explicitly.
    monkeypatch.setattr(_manifest, "RACY_NS", 0)


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture(name="make_tree")
def make_tree_fixture() -> Callable[[Path, dict[str, bytes]], Path]:
    return make_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(
        tmp_path / "tree",
        {
            "a.txt": b"alpha\n",
            "b.bin": os.urandom(5000),
            "sub/c.bin": os.urandom(70_000),
            "sub/deeper/d.txt": b"delta\n" * 100,
            "table.csv": b"id,city,score\n1,Paris,0.5\n2,Rome,\n3,Paris,1.5\n",
            "empty.dat": b"",
        },
    )
