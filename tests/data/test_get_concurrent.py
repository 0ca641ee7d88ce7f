"""Two `modelyard.data.get` calls of one version at once, when the cached copy no longer verifies."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path
from typing import Any

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.data import _versions


def test_a_get_does_not_delete_the_copy_a_concurrent_get_just_made_and_returned(
    platform: Platform, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first get found the copy tampered with and was about to replace it when a second get replaced it
    and returned it: the first then deleted that fresh copy under the second's caller."""
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    cached = data.get("ds@1", platform=platform, ctx=ctx)
    (cached / "a.txt").write_text("tampered")

    first_found_it_bad, go, second_waits = threading.Event(), threading.Event(), threading.Event()
    real_verify, real_flock = _versions.verify_tree, fcntl.flock

    def verify_tree(*args: Any) -> bool:
        ok = real_verify(*args)
        if not ok and not first_found_it_bad.is_set():  # the first get stops here until told to go on
            first_found_it_bad.set()
            assert go.wait(60)
        return ok

    def flock(fd: int, op: int) -> None:  # tells the test when a get would wait for a lock
        if op & fcntl.LOCK_NB:
            return real_flock(fd, op)
        try:
            return real_flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            second_waits.set()
            return real_flock(fd, op)

    monkeypatch.setattr(_versions, "verify_tree", verify_tree)
    monkeypatch.setattr(fcntl, "flock", flock)
    inodes: dict[str, int] = {}

    def get(who: str, done: threading.Event | None = None) -> None:
        inodes[who] = (data.get("ds@1", platform=platform, ctx=ctx) / "a.txt").stat().st_ino
        if done is not None:
            done.set()

    first = threading.Thread(target=get, args=("first",))
    first.start()
    assert first_found_it_bad.wait(60)
    second = threading.Thread(target=get, args=("second", second_waits))  # done or waiting: the same
    second.start()
    assert second_waits.wait(60)
    go.set()
    first.join(60)
    second.join(60)
    assert inodes["first"] == inodes["second"] == (cached / "a.txt").stat().st_ino
    assert (cached / "a.txt").read_bytes() == b"alpha\n"
