"""A checkout whose temp directory cannot be locked (flock failing with ENOLCK, as on some network
filesystems, or EWOULDBLOCK): the temp directory stayed behind in the destination's parent (or in the empty
destination) and the error was a UsageError telling the user to fix permissions. Now nothing is left behind
and the error names the directory, why it failed and what to do; `get`, whose cache lock was a raw OSError,
says the same of its lock file. The OS call is simulated: flock is replaced in the module under test only."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import types
from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.data import _versions
from modelyard.errors import ConfigError, NotFoundError, UsageError
from modelyard.testing import same_tree


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _failing_flock(monkeypatch: pytest.MonkeyPatch, code: int, *, only_nonblocking: bool = False) -> None:
    """flock as seen by _versions raises OSError(code) (all calls, or only LOCK_NB ones: checkout's own
    lock, not get's cache lock); the real fcntl module is left alone for everything else."""

    def flock(fd: int, operation: int) -> None:
        if only_nonblocking and not operation & fcntl.LOCK_NB:
            return fcntl.flock(fd, operation)
        raise OSError(code, os.strerror(code))

    fake = types.SimpleNamespace(**{k: getattr(fcntl, k) for k in dir(fcntl) if k.startswith("LOCK_")})
    fake.flock = flock
    monkeypatch.setattr(_versions, "fcntl", fake)


@pytest.fixture
def ds(platform: Platform, tree: Path) -> Platform:
    data.add_version(platform, platform.context(), tree, "ds")
    return platform


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EWOULDBLOCK])
@pytest.mark.parametrize("existing", [False, True], ids=["new-dest", "empty-dest"])
def test_a_lock_that_fails_leaves_nothing_behind(
    ds: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, existing: bool
) -> None:
    parent = tmp_path / "out"
    parent.mkdir()
    dest = parent / "dest"
    if existing:
        dest.mkdir()
    before = _listing(parent)
    _failing_flock(monkeypatch, code)
    with pytest.raises(UsageError) as info:
        data.checkout(ds, ds.context(), "ds@1", dest)
    assert _listing(parent) == before  # no temp directory, no dest
    message = str(info.value)
    where = dest if existing else parent
    assert f"cannot check out into {dest}" in message and "read and write" not in message  # not a mode
    if code == errno.EWOULDBLOCK:  # held by another checkout's sweep each time: made again, then given up
        assert f"removed this one's temporary directory in {where} 5 times" in message, message
        return
    assert os.strerror(code) in message  # the remedy is another filesystem
    assert re.search(rf"cannot lock .* in {re.escape(str(where))}", message), message


def test_get_whose_checkout_cannot_lock_leaves_nothing_in_the_cache(
    ds: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = ds.context()
    cache = ds.settings.home / "cache" / "data" / ctx.project
    _failing_flock(monkeypatch, errno.ENOLCK, only_nonblocking=True)
    with pytest.raises(UsageError, match=re.escape(os.strerror(errno.ENOLCK))):
        data.get("ds@1", platform=ds, ctx=ctx)
    assert _listing(cache) == [".ds@1.lock"]  # the cache's own lock file, kept by design; no temp directory
    monkeypatch.undo()
    assert same_tree(data.get("ds@1", platform=ds, ctx=ctx), tree)


def test_get_whose_cache_lock_fails_is_a_clear_error(ds: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ds.context()
    _failing_flock(monkeypatch, errno.ENOLCK)
    with pytest.raises(ConfigError) as info:  # was a raw OSError
        data.get("ds@1", platform=ds, ctx=ctx)
    message = str(info.value)
    assert "cannot lock" in message and os.strerror(errno.ENOLCK) in message and ".ds@1.lock" in message
    cache = ds.settings.home / "cache" / "data" / ctx.project
    assert _listing(cache) == [".ds@1.lock"]


def test_remove_whose_cache_lock_fails_warns_and_the_removal_stands(
    ds: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = ds.context()
    cached = data.get("ds@1", platform=ds, ctx=ctx)
    _failing_flock(monkeypatch, errno.ENOLCK)
    (warning,) = data.remove(ds, ctx, "ds@1").warnings
    assert f"could not delete the cached copy {cached}" in warning and os.strerror(errno.ENOLCK) in warning
    assert cached.is_dir()  # not deleted without the lock: a get may be writing it
    monkeypatch.undo()
    with pytest.raises(NotFoundError):
        data.show(ds, ctx, "ds@1")
