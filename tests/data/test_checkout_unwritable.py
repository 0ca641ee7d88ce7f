"""Checkout and get where a directory cannot be made, read or written: one clear modelyard error naming the
path and what to do, and nothing left behind. File modes do not bind root (CAP_DAC_OVERRIDE), so the cases
made with chmod skip there; a file where a directory is expected, a name too long and sysfs (which refuses
mkdir even to root) fail for everyone."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.errors import ConfigError, UsageError
from modelyard.testing import same_tree


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def modes_bind(tmp_path: Path) -> Iterator[None]:
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o500)
    try:
        (probe / "x").mkdir()
    except PermissionError:
        yield
        return
    finally:
        probe.chmod(0o700)
    pytest.skip("file modes do not restrict this process (root or CAP_DAC_OVERRIDE)")


@pytest.fixture
def ds(platform: Platform, tree: Path) -> Platform:
    data.add_version(platform, platform.context(), tree, "ds")
    return platform


def test_a_destination_below_a_file_names_the_file(ds: Platform, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    before = _listing(tmp_path)
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path / 'f'}: it is a file, not a directory")):
        data.checkout(ds, ds.context(), "ds@1", tmp_path / "f" / "sub")
    assert _listing(tmp_path) == before and (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize("dest", ["x" * 300, "x" * 300 + "/y"])
def test_a_destination_name_too_long_is_a_usage_error(ds: Platform, tmp_path: Path, dest: str) -> None:
    before = _listing(tmp_path)
    with pytest.raises(UsageError, match=r"cannot check out into .*too long"):  # was a raw OSError
        data.checkout(ds, ds.context(), "ds@1", tmp_path / dest)
    assert _listing(tmp_path) == before


def test_a_destination_where_even_root_may_not_write(ds: Platform) -> None:
    if not os.path.ismount("/sys") or not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs mounted at /sys")
    denied = r"/sys/kernel/yard-no-such-dir: (Operation not permitted|Permission denied)"
    with pytest.raises(UsageError, match=denied):
        data.checkout(ds, ds.context(), "ds@1", "/sys/kernel/yard-no-such-dir/out")


@pytest.mark.usefixtures("modes_bind")
@pytest.mark.parametrize(
    ("made", "mode", "dest"),
    [
        ("ro", 0o500, "ro/out"),  # parent not writable
        ("ro", 0o500, "ro"),  # empty destination not writable
        ("wo", 0o300, "wo"),  # empty destination not readable
        ("nx", 0o600, "nx/out"),  # parent not searchable
    ],
)
def test_a_destination_this_user_cannot_use_is_a_usage_error(
    ds: Platform, tmp_path: Path, made: str, mode: int, dest: str
) -> None:
    (tmp_path / made).mkdir()
    before = _listing(tmp_path)
    (tmp_path / made).chmod(mode)
    try:
        denied = re.escape(f"cannot check out into {tmp_path / dest}: ") + ".*Permission denied"
        with pytest.raises(UsageError, match=denied):
            data.checkout(ds, ds.context(), "ds@1", tmp_path / dest)
    finally:
        (tmp_path / made).chmod(0o700)
    assert _listing(tmp_path) == before


def test_get_with_a_file_where_the_cache_directory_belongs(ds: Platform) -> None:
    cache = ds.settings.home / "cache"
    cache.mkdir(exist_ok=True)
    (cache / "data").write_text("not a directory")
    # Was a raw NotADirectoryError.
    with pytest.raises(
        ConfigError, match=re.escape(f"dataset cache: {cache / 'data'}: it is a file, not a directory; ")
    ):
        data.get("ds@1", platform=ds)
    assert (cache / "data").read_text() == "not a directory"


@pytest.mark.usefixtures("modes_bind")
def test_get_with_a_cache_this_user_cannot_write(ds: Platform, tree: Path) -> None:
    cache = ds.settings.home / "cache"
    cache.mkdir(exist_ok=True)
    cache.chmod(0o500)
    try:
        denied = re.escape(f"dataset cache: {cache / 'data'}: Permission denied")
        with pytest.raises(ConfigError, match=denied):
            data.get("ds@1", platform=ds)
    finally:
        cache.chmod(0o700)
    assert not (cache / "data").exists()
    got = data.get("ds@1", platform=ds)
    # The stat cache (SQLite, WAL) cannot make its side files there: was sqlite3.OperationalError.
    cache.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=re.escape(f"dataset cache: {cache / 'stat.db'}: ")):
            data.get("ds@1", platform=ds)
    finally:
        cache.chmod(0o700)
    # A copy made earlier, found changed, cannot be replaced in a project folder this user cannot write.
    (got / "a.txt").write_text("tampered")
    got.parent.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"dataset cache: .*: Permission denied"):
            data.get("ds@1", platform=ds)
    finally:
        got.parent.chmod(0o700)
    assert same_tree(data.get("ds@1", platform=ds), tree)
