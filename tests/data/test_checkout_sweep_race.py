"""Two checkouts into one destination: each sweeps the temp directories that killed checkouts left there
(unlocked ones), and a temp directory is unlocked for a moment between being made and being locked. A
sweep in that moment removed the other checkout's fresh directory, which then failed with a misleading
"cannot lock" error (or wrote into a removed tree). The checkout makes another one instead."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.data import _versions
from modelyard.errors import UsageError
from modelyard.testing import same_tree


def _swept_once(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """mkdtemp as _versions sees it: the first directory it makes is swept by another checkout at once."""
    swept: list[str] = []
    real = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        made = real(*args, **kwargs)
        if not swept:
            swept.append(made)
            shutil.rmtree(made)  # what the other checkout's sweep did: it was not locked yet
        return made

    monkeypatch.setattr(_versions.tempfile, "mkdtemp", mkdtemp)
    return swept


@pytest.mark.parametrize("existing", [False, True], ids=["new-dest", "empty-dest"])
def test_a_temp_directory_swept_before_it_was_locked_is_made_again(
    platform: Platform, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    data.add_version(platform, platform.context(), tree, "ds")
    dest = tmp_path / "out" / "dest"
    if existing:
        dest.mkdir(parents=True)
    swept = _swept_once(monkeypatch)
    data.checkout(platform, platform.context(), "ds@1", dest)
    assert swept and same_tree(tree, dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest"]


def test_a_temp_directory_swept_every_time_is_a_clear_error(
    platform: Platform, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data.add_version(platform, platform.context(), tree, "ds")
    dest = tmp_path / "out" / "dest"
    real = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        made = real(*args, **kwargs)
        shutil.rmtree(made)
        return made

    monkeypatch.setattr(_versions.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(UsageError, match=r"another checkout into .* removed"):
        data.checkout(platform, platform.context(), "ds@1", dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
