"""An empty (0-byte) table file is versioned with a warning that says it is empty, not "malformed"."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform


@pytest.mark.parametrize("name", ["placeholder.csv", "events.jsonl", "t.parquet"])
def test_an_empty_table_is_called_empty(platform: Platform, tmp_path: Path, name: str) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / name).write_bytes(b"")
    (root / "ok.csv").write_text("a\n1\n")
    info = data.add_version(platform, platform.context(), root, "e")
    # It read "cannot read it as csv: it is malformed or uses a feature pyarrow cannot read".
    assert info.profile["skipped"][name] == "it is empty (0 bytes)"
    assert list(info.warnings) == [f"{name}: no statistics recorded: it is empty (0 bytes)"]
    assert info.profile["tables"]["ok.csv"]["rows"] == 1
