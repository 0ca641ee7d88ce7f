"""The stat cache's "racily clean" rule is measured from when a file was read, not when its digest is
stored: a chunk that takes long to seal must not make a file read just after a write trustworthy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.data import _manifest

RACY_S = 0.5


def test_a_file_read_while_racily_clean_is_not_cached_however_late_it_is_stored(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule compared the file's mtime with the clock when the digest was stored: on a tree whose
    chunks take longer than the window to seal, a file written just before it was read was cached, and a
    rewrite in the same timestamp tick (same size, same stat) would later be answered from the cache."""
    monkeypatch.setattr(_manifest, "RACY_NS", int(RACY_S * 1e9))
    hashed: list[int] = []
    real_store, real_close = _manifest.StatCache.store, _manifest.StatCache.close

    def slow_store(self: _manifest.StatCache, *args: object, **kwargs: object) -> None:
        time.sleep(2 * RACY_S)  # a chunk that took long to seal
        real_store(self, *args, **kwargs)  # type: ignore[arg-type]

    def close(self: _manifest.StatCache) -> None:
        hashed.append(self.hashed)
        real_close(self)

    monkeypatch.setattr(_manifest.StatCache, "store", slow_store)
    monkeypatch.setattr(_manifest.StatCache, "close", close)
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.txt").write_bytes(b"written just now\n")  # and read at once, within the window
    ctx = platform.context()
    data.add_version(platform, ctx, root, "ds")
    data.add_version(platform, ctx, root, "ds")
    assert hashed == [1, 1]  # read again: never trusted from the cache
    # get() verifies its cached checkout through the cache the same way.
    got = data.get("ds@1", platform=platform, ctx=ctx)
    hashed.clear()
    data.get("ds@1", platform=platform, ctx=ctx)
    assert hashed == [1] and got.is_dir()
