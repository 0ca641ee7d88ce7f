"""Artifact-store details beyond the contract suite: grouping of large batches, CLI-independent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelyard.core import Platform, _artifacts, get_artifacts, put_artifacts


def test_batches_publish_in_bounded_groups(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_artifacts, "_GROUP_FILES", 3)
    staging = platform.backend.staging_dir()
    seen: list[int] = []
    real_seal = platform.artifacts._seal

    def seal(src):  # type: ignore[no-untyped-def]
        seen.append(len(list(staging.iterdir())))  # sealed files waiting to be published
        return real_seal(src)

    monkeypatch.setattr(platform.artifacts, "_seal", seal)
    files = []
    for i in range(10):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(1000) if i != 7 else (tmp_path / "f1").read_bytes())  # f7 == f1
        files.append(path)
    infos = put_artifacts(platform, platform.context(), files)
    assert max(seen) <= 2  # never more than a group's worth in temp space
    assert len(list(platform.backend.list("objects/"))) == 9  # the duplicate across groups is stored once
    assert list(staging.iterdir()) == []
    outs = [(i.digest, tmp_path / "out" / i.name) for i in infos]
    get_artifacts(platform, platform.context(), outs)
    assert [o.read_bytes() for _, o in outs] == [f.read_bytes() for f in files]
