"""`yard init` and `yard quickstart` under a permissive umask: every folder they create on the way to the
home, the key file and the SQLite store is 0700. `mkdir(parents=True)` gave the missing parents the
umask's default (0777 under `umask 000`): anyone could then rename the private home, key or store folder
away and put their own in its place (a master key they know, a store they wrote)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import load_settings
from modelyard.core import init_home


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, str]:
    """Every folder under ``root`` whose mode lets others in, and every file others may read."""
    out = {}
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            out[str(path.relative_to(root.parent))] = oct(mode)
    return out


def test_init_makes_every_missing_parent_private(tmp_path: Path, open_umask: None) -> None:
    settings = load_settings(
        home=tmp_path / "h" / "a" / "home",
        master_key_file=tmp_path / "k" / "a" / "keys" / "master.key",
        database_url=f"sqlite:///{tmp_path / 'd' / 'a' / 'meta' / 'yard.db'}",
    )
    init_home(settings)
    for top in ("h", "k", "d"):
        assert _modes(tmp_path / top) == {}, top


def test_quickstart_makes_every_missing_parent_of_its_home_private(tmp_path: Path, open_umask: None) -> None:
    from modelyard.pipelines._quickstart import _fresh

    _fresh(tmp_path / "q" / "a" / "home")
    assert _modes(tmp_path / "q") == {}
