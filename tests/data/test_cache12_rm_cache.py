"""`remove` also deletes this home's cached copy of the version that `get` made (plain text, perhaps PII)."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.data import _versions
from modelyard.errors import NotFoundError
from modelyard.testing import Yard

MakeTree = Callable[[Path, dict[str, bytes]], Path]
MARKER = b"PII-MARKER jane.doe@example.com"


def _two_cached_versions(platform: Platform, tmp_path: Path, make_tree: MakeTree) -> tuple[Path, Path]:
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "v1", {"people.txt": MARKER}), "ds")
    data.add_version(platform, ctx, make_tree(tmp_path / "v2", {"people.txt": b"anonymised"}), "ds")
    return data.get("ds@1", platform=platform, ctx=ctx), data.get("ds@2", platform=platform, ctx=ctx)


def test_remove_deletes_the_cached_copy_and_leaves_other_versions(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    ctx = platform.context()
    v1, v2 = _two_cached_versions(platform, tmp_path, make_tree)
    assert (v1 / "people.txt").read_bytes() == MARKER

    info = data.remove(platform, ctx, "ds@1")

    assert info.warnings == ()
    assert not v1.exists() and not v1.is_symlink()
    assert (v2 / "people.txt").read_bytes() == b"anonymised"
    assert data.get("ds@2", platform=platform, ctx=ctx) == v2
    with pytest.raises(NotFoundError):
        data.get("ds@1", platform=platform, ctx=ctx)
    assert not v1.exists()


def test_remove_of_a_version_never_fetched_creates_nothing_in_the_cache(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "v1", {"people.txt": MARKER}), "ds")
    assert data.remove(platform, ctx, "ds@1").warnings == ()
    assert not (platform.settings.home / "cache" / "data").exists()


def test_a_copy_that_cannot_be_deleted_is_a_warning_and_the_removal_stands(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    ctx = platform.context()
    v1, _ = _two_cached_versions(platform, tmp_path, make_tree)
    (v1.parent / ".ds@1.lock").unlink()
    (v1.parent / ".ds@1.lock").mkdir()  # the lock cannot be opened, so the copy is not touched

    info = data.remove(platform, ctx, "ds@1")

    assert len(info.warnings) == 1 and str(v1) in info.warnings[0]
    assert (v1 / "people.txt").read_bytes() == MARKER
    with pytest.raises(NotFoundError):
        data.show(platform, ctx, "ds@1")


def test_yard_data_rm_deletes_the_copy_and_prints_why_it_could_not(
    platform: Platform, yard: Yard, tmp_path: Path, make_tree: MakeTree
) -> None:
    v1, v2 = _two_cached_versions(platform, tmp_path, make_tree)
    (v2.parent / ".ds@2.lock").unlink()
    (v2.parent / ".ds@2.lock").mkdir()

    ok = yard("data", "rm", "ds@1")
    assert (ok.code, ok.err) == (0, "") and "removed ds@1" in ok.out
    assert not v1.exists()

    kept = yard("data", "rm", "ds@2")
    assert kept.code == 0 and "removed ds@2" in kept.out
    assert "warning: could not delete the cached copy" in kept.err and str(v2) in kept.err


# -- a get and a remove of the same version at once ----------------------------------------------------------


@pytest.mark.parametrize("fetched_before", [True, False])
def test_a_remove_between_gets_lookup_and_its_lock_leaves_no_copy(
    any_platform: Platform,
    tmp_path: Path,
    make_tree: MakeTree,
    monkeypatch: pytest.MonkeyPatch,
    fetched_before: bool,
) -> None:
    """get looked the version up, then a whole remove ran (finding no copy to delete, or deleting the old one)
    before get took the cache lock: get must not then write a copy of the removed version."""
    platform = any_platform
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "v1", {"people.txt": MARKER}), "ds")
    target = data.get("ds@1", platform=platform, ctx=ctx) if fetched_before else None
    real_resolve = _versions.resolve
    removed: list[data.VersionInfo] = []

    def resolve(*args: Any, **kwargs: Any) -> data.VersionInfo:
        info = real_resolve(*args, **kwargs)
        if not removed:  # get's lookup: the remove runs to its end right after it
            removed.append(data.remove(platform, ctx, "ds@1"))
        return info

    monkeypatch.setattr(_versions, "resolve", resolve)
    with pytest.raises(NotFoundError, match="has no version 1"):
        data.get("ds@1", platform=platform, ctx=ctx)
    assert removed[0].warnings == ()
    copy = target or platform.settings.home / "cache" / "data" / ctx.project / "ds@1"
    assert not copy.exists() and not copy.is_symlink()
    assert [p.name for p in copy.parent.iterdir()] == [".ds@1.lock"]  # no temp directory either


def test_a_remove_during_gets_checkout_deletes_the_copy_get_then_made(
    any_platform: Platform, tmp_path: Path, make_tree: MakeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remove committed while get was writing the copy: its deletion waits for get's lock, so the copy
    get publishes (a get that began first) is deleted once get lets go, and no copy of the version stays."""
    platform = any_platform
    ctx = platform.context()
    data.add_version(platform, ctx, make_tree(tmp_path / "v1", {"people.txt": MARKER}), "ds")
    real_materialise, real_flock = _versions._materialise, fcntl.flock
    rm_waits = threading.Event()
    removed: list[data.VersionInfo] = []

    def flock(fd: int, op: int) -> None:  # tells the test when the remove waits for get's lock
        if op & fcntl.LOCK_NB or threading.current_thread() is threading.main_thread():
            return real_flock(fd, op)
        try:
            return real_flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            rm_waits.set()
            return real_flock(fd, op)

    def materialise(*args: Any) -> None:
        rm = threading.Thread(target=lambda: removed.append(data.remove(platform, ctx, "ds@1")))
        rm.start()
        assert rm_waits.wait(60)  # committed, and now waiting to delete the copy
        with pytest.raises(NotFoundError):
            data.show(platform, ctx, "ds@1")
        real_materialise(*args)
        threads.append(rm)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(_versions, "_materialise", materialise)
    target = data.get("ds@1", platform=platform, ctx=ctx)
    threads[0].join(60)
    assert not threads[0].is_alive() and removed[0].warnings == ()
    assert not target.exists() and not target.is_symlink()
    assert [p.name for p in target.parent.iterdir()] == [".ds@1.lock"]
