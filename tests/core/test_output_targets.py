"""Outputs are written to a temp file renamed into place: a path naming a device, FIFO or socket (or a link
to one) is refused, never replaced by a regular file (as root, `-o /dev/full` replaced the device)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from modelyard.core import Platform, get_artifact, put_artifact
from modelyard.core._paths import write_file
from modelyard.errors import UsageError


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def test_an_artifact_is_not_written_over_a_fifo_or_a_link_to_one(
    platform: Platform, tmp_path: Path, fifo: Path
) -> None:
    src = tmp_path / "a.txt"
    src.write_text("hello")
    digest = put_artifact(platform, platform.context(), src).digest
    link = tmp_path / "out"
    link.symlink_to(fifo)  # like /dev/stdout, a link to /proc/self/fd/1
    for dest in (fifo, link):
        with pytest.raises(UsageError, match="not a regular file"):
            get_artifact(platform, platform.context(), digest, dest)
        assert stat.S_ISFIFO(os.stat(dest).st_mode)
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "home", "out", "pipe"]
    get_artifact(platform, platform.context(), digest, tmp_path / "b.txt")  # a file path still works
    assert (tmp_path / "b.txt").read_text() == "hello"


def test_write_file_refuses_a_fifo_and_writes_files(tmp_path: Path, fifo: Path) -> None:
    with pytest.raises(UsageError, match="not a regular file"):
        write_file(fifo, "x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    write_file(tmp_path / "f", "x")
    write_file(tmp_path / "f", "y")  # a regular file is replaced, as before
    assert (tmp_path / "f").read_text() == "y"
