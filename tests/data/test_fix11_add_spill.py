"""An add whose temp files cannot be set up (the store's staging folder full or unwritable) fails with
a clear, audited error and leaves no ``data-add-*`` folder in the staging folder."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from modelyard import data
from modelyard.core import Platform, list_records
from modelyard.errors import BackendError


def _full_disk(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """Temp files or folders named ``prefix*`` cannot be made: the file system is full."""
    real_mkstemp, real_mkdtemp = tempfile.mkstemp, tempfile.mkdtemp

    def refuse(kwargs: dict[str, Any]) -> None:
        if str(kwargs.get("prefix", "")).startswith(prefix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(kwargs.get("dir")))

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        refuse(kwargs)
        return real_mkstemp(*args, **kwargs)

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        refuse(kwargs)
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


@pytest.mark.parametrize("prefix", [".spill-", "data-add-"])
def test_add_that_cannot_make_its_temp_files_leaves_nothing_and_says_why(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    staging = platform.artifacts.backend.staging_dir()
    before = set(staging.iterdir())
    _full_disk(monkeypatch, prefix)
    with pytest.raises(BackendError, match="No space left on device") as caught:
        data.add_version(platform, platform.context(), tree, "ds")
    monkeypatch.undo()
    assert str(tree) in caught.value.message
    assert set(staging.iterdir()) == before
    rec = list_records(platform, platform.context())[-1]
    assert (rec["action"], rec["outcome"]) == ("dataset.write", "refused")
    # Nothing was left half set up: the next add works.
    assert data.add_version(platform, platform.context(), tree, "ds").version == 1


def test_add_interrupted_while_setting_up_leaves_no_temp_folder(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = platform.artifacts.backend.staging_dir()
    before = set(staging.iterdir())
    real = tempfile.mkstemp

    def interrupted(*args: Any, **kwargs: Any) -> tuple[int, str]:
        if str(kwargs.get("prefix", "")).startswith(".spill-"):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.add_version(platform, platform.context(), tree, "ds")
    monkeypatch.undo()
    assert set(staging.iterdir()) == before
