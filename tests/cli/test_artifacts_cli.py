"""`yard artifacts put` never stores modelyard's own files (the master key, the database, the store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.testing import Yard


@pytest.mark.parametrize("target", [".", "", "home", "home/keys", "home/keys/master.key", "home/artifacts"])
def test_put_refuses_the_home_its_keys_and_its_store(
    yard: Yard, home: Path, tmp_path: Path, target: str
) -> None:
    # From the folder holding the home, `yard artifacts put .` (or "", which is the same path) encrypted
    # the master key, the database and the store's objects into the project, for any viewer to `get`.
    assert home.parent == tmp_path and yard("init").code == 0
    (tmp_path / "notes.txt").write_text("mine")
    r = yard("artifacts", "put", target)
    assert r.code == 2
    assert "modelyard's own" in r.error
    assert yard("artifacts", "ls", "--json").json() == []
    r = yard("artifacts", "put", "notes.txt")  # the user's own files still go in
    assert r.code == 0, r.err
    assert [a["name"] for a in yard("artifacts", "ls", "--json").json()] == ["notes.txt"]
