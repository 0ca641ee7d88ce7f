"""An add whose stat cache ($YARD_HOME/cache/stat.db) cannot be made or used fails with one clear, audited
modelyard error naming the path and what to do, and adds nothing (no version, no temp folder, no object).
File modes do not bind root, so the chmod case skips there; the others fail for everyone."""

from __future__ import annotations

import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform, list_records
from modelyard.errors import ConfigError


def _file_for_the_folder(cache: Path) -> Path:
    cache.write_text("not a directory")
    return cache


def _folder_for_the_file(cache: Path) -> Path:
    (cache / "stat.db").mkdir(parents=True)
    return cache / "stat.db"


def _link_for_the_file(cache: Path) -> Path:
    cache.mkdir()
    (cache / "stat.db").symlink_to(cache / "elsewhere.db")
    return cache / "stat.db"


def _not_a_database(cache: Path) -> Path:
    cache.mkdir()
    (cache / "stat.db").write_bytes(b"this is not an SQLite file" * 100)
    return cache / "stat.db"


def _foreign_table(cache: Path) -> Path:
    # Opens fine, fails at the first lookup: the error comes while the files are being staged.
    cache.mkdir()
    with sqlite3.connect(cache / "stat.db") as db:
        db.execute("CREATE TABLE stat_b (path BLOB PRIMARY KEY)")
    db.close()
    return cache / "stat.db"


def _objects(platform: Platform) -> list[Path]:
    return sorted(p for p in platform.settings.home.rglob("*") if p.is_file() and "cache" not in p.parts)


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (_file_for_the_folder, "it is a file, not a directory"),
        (_folder_for_the_file, "unable to open database file"),
        (_link_for_the_file, "a symbolic link is where a private file belongs"),
        (_not_a_database, "file is not a database"),
        (_foreign_table, "no such column"),
    ],
)
def test_add_with_an_unusable_stat_cache_adds_nothing_and_says_why(
    platform: Platform, tree: Path, spoil: Callable[[Path], Path], why: str
) -> None:
    cache = platform.settings.home / "cache"
    failed = spoil(cache)
    staging = platform.artifacts.backend.staging_dir()
    before, objects = set(staging.iterdir()), _objects(platform)
    # Was a raw OSError or sqlite3 error, not audited.
    said = re.escape(f"cannot use the dataset cache: {failed}: {why}")
    with pytest.raises(ConfigError, match=said) as caught:
        data.add_version(platform, platform.context(), tree, "ds", message="first")
    assert f"make {cache} a directory this user can write" in caught.value.message
    rec = list_records(platform, platform.context())[-1]
    assert (rec["action"], rec["resource"], rec["outcome"]) == ("dataset.write", "dataset:ds", "refused")
    assert data.list_datasets(platform, platform.context()) == []
    assert set(staging.iterdir()) == before and _objects(platform) == objects
    # Once the cache is made usable again (here: deleted, as the message allows) the add works.
    if cache.is_dir():
        shutil.rmtree(cache)
    else:
        cache.unlink()
    assert data.add_version(platform, platform.context(), tree, "ds").version == 1


def test_add_with_a_stat_cache_folder_this_user_cannot_write(platform: Platform, tree: Path) -> None:
    cache = platform.settings.home / "cache"
    cache.mkdir(mode=0o500)
    try:
        try:
            (cache / "probe").mkdir()
        except PermissionError:
            pass
        else:
            pytest.skip("file modes do not restrict this process (root or CAP_DAC_OVERRIDE)")
        denied = re.escape(f"cannot use the dataset cache: {cache / 'stat.db'}: Permission denied")
        with pytest.raises(ConfigError, match=denied):
            data.add_version(platform, platform.context(), tree, "ds")
    finally:
        cache.chmod(0o700)
    assert data.list_datasets(platform, platform.context()) == []
