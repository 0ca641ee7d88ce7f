"""Two stat caches on one file in one process (concurrent adds and gets in a server or notebook) keep each
other's SQLite locks: opening one must not open and close the file itself (any close drops the process's POSIX
locks), or another process takes the file as unused and deletes the WAL under the first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.data._manifest import Entry, StatCache


def test_a_second_stat_cache_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "stat.db"
    first = StatCache(path)
    try:
        entry = Entry("a", "/x/a", 1, 2, 3, 4, "0" * 64)
        first.store([entry], read_from=10**18)
        first.fill([Entry("a", "/x/a", 1, 2, 3, 4)])  # a read: the connection holds its WAL lock
        StatCache(path).close()
        read = "select count(*) from stat_b"  # one that reads nothing would not open the WAL
        code = f"import sqlite3; c = sqlite3.connect({str(path)!r}); c.execute({read!r}); c.close()"
        subprocess.run([sys.executable, "-c", code], check=True)
        assert Path(f"{path}-wal").exists()
        again = Entry("a", "/x/a", 1, 2, 3, 4)
        assert first.fill([again]) == [] and again.sha256 == "0" * 64
    finally:
        first.close()


def test_a_link_planted_at_the_stat_cache_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "stat.db").symlink_to(target)
    with pytest.raises(OSError):
        StatCache(tmp_path / "cache" / "stat.db")
    assert not target.exists() and os.path.islink(tmp_path / "cache" / "stat.db")
