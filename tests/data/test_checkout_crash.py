"""A checkout killed part-way (SIGKILL: no cleanup runs) leaves nothing a rerun trips on or a reader could
take for the version, beyond what the rerun can tell apart and clear."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.errors import UsageError
from modelyard.testing import same_tree

# Checks out ds@1 into argv[1] and is killed, by itself, at the point argv[2] names: "written" (every file
# written into the temp directory, before it is moved into place) or "moving" (after the first of the temp
# directory's entries has been moved into an existing destination).
KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from modelyard.core import Platform
    from modelyard.core._artifacts import ArtifactStore
    from modelyard.data import _versions

    dest, when = sys.argv[1], sys.argv[2]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if when == "written":
        real_get_many = ArtifactStore.get_many
        def get_many(self, *args, **kwargs):
            real_get_many(self, *args, **kwargs)
            die()
        ArtifactStore.get_many = get_many
    else:
        real_rename = os.rename
        def rename(src, dst, *args, **kwargs):
            real_rename(src, dst, *args, **kwargs)
            if os.path.dirname(os.path.abspath(dst)) == os.path.abspath(dest):
                die()
        _versions.os.rename = rename
    with Platform() as platform:
        _versions.checkout(platform, platform.context(), "ds@1", dest)
    """
)


def _killed_checkout(dest: Path, when: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED, str(dest), when], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-3000:]


def test_a_rerun_after_a_checkout_killed_before_moving_into_an_empty_directory_succeeds(
    platform: Platform, tree: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    dest = tmp_path / "empty"
    dest.mkdir()
    _killed_checkout(dest, "written")
    left = list(dest.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".empty.checkout-")  # hidden, not the version
    data.checkout(platform, ctx, "ds@1", dest)  # was refused: "not empty"
    assert same_tree(dest, tree)
    assert not any(p.name.startswith(".empty.") for p in dest.iterdir())


def test_a_rerun_after_a_checkout_killed_before_renaming_into_place_clears_its_temp_directory(
    platform: Platform, tree: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    dest = tmp_path / "new"
    _killed_checkout(dest, "written")
    assert not dest.exists()
    data.checkout(platform, ctx, "ds@1", dest)
    assert same_tree(dest, tree)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".new.")] == []  # was left for good


def test_a_checkout_killed_while_moving_into_an_empty_directory_is_named_by_the_rerun(
    platform: Platform, tree: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    dest = tmp_path / "empty"
    dest.mkdir()
    _killed_checkout(dest, "moving")
    before = sorted(p.name for p in dest.iterdir())
    assert any(name.startswith(".empty.checkout-") for name in before)  # what was not moved yet
    with pytest.raises(UsageError, match="interrupted"):
        data.checkout(platform, ctx, "ds@1", dest)
    assert sorted(p.name for p in dest.iterdir()) == before


def test_a_live_checkouts_temp_directory_is_not_taken_for_a_leftover(
    platform: Platform, tree: Path, tmp_path: Path
) -> None:
    """Another checkout into the same directory, still running, holds its temp directory locked."""
    import fcntl

    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    dest = tmp_path / "empty"
    dest.mkdir()
    live = dest / ".empty.checkout-live1234"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(UsageError, match="not empty"):
            data.checkout(platform, ctx, "ds@1", dest)
        assert live.is_dir()
    finally:
        os.close(fd)


def test_a_directory_that_only_starts_like_a_leftover_is_kept(
    platform: Platform, tree: Path, tmp_path: Path
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    mine = tmp_path / ".new.checkout-notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    data.checkout(platform, ctx, "ds@1", tmp_path / "new")
    assert (mine / "keep.txt").read_text() == "mine"
