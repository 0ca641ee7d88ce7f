"""References a user types that name no version that can exist: a clear "not found", not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.errors import NotFoundError
from modelyard.tracking import lineage


@pytest.mark.parametrize(
    "ref",
    [
        "tickets@99999999999999999999",
        "dataset:tickets@99999999999999999999",
        "model:t5@99999999999999999999",
        "dataset:tickets@01",  # version 1 exists, but its edges are dataset:tickets@1
        "dataset:tickets",
    ],
)
def test_a_version_no_row_can_have_is_not_found(platform: Platform, tmp_path: Path, ref: str) -> None:
    """A version past SQLite's 64-bit integers made `yard lineage show` die with an unexpected
    OverflowError; a spelling no edge is written with (leading zeros, no version) showed empty trees,
    as if the version existed and nothing was recorded."""
    from modelyard.data import add_version

    ctx = platform.context()
    (tmp_path / "a.txt").write_text("a")
    add_version(platform, ctx, tmp_path / "a.txt", "tickets")
    with pytest.raises(NotFoundError, match="not found in project 'default'"):
        lineage(platform, ctx, ref)
