"""Wrong types through the Python API get a clear UsageError and change nothing, as bad values do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.errors import UsageError


def _calls(platform: Platform, tree: Path, out: Path) -> dict[str, Callable[[], Any]]:
    ctx = platform.context()
    bad: Any = None
    return {
        "add path None": lambda: data.add_version(platform, ctx, bad, "ds"),
        "add path int": lambda: data.add_version(platform, ctx, 5, "ds"),  # type: ignore[arg-type]
        "add workers str": lambda: data.add_version(platform, ctx, tree, "ds", workers="2"),  # type: ignore[arg-type]
        "checkout dest None": lambda: data.checkout(platform, ctx, "ds@1", bad),
        "checkout workers str": lambda: data.checkout(platform, ctx, "ds@1", out, workers="2"),  # type: ignore[arg-type]
        "anonymize columns str": lambda: data.anonymize(platform, ctx, "ds@1", columns="email"),
        "anonymize columns int": lambda: data.anonymize(platform, ctx, "ds@1", columns=[1]),  # type: ignore[list-item]
        "anonymize columns number": lambda: data.anonymize(platform, ctx, "ds@1", columns=5),  # type: ignore[arg-type]
    }


@pytest.mark.parametrize(
    "call",
    [
        "add path None",
        "add path int",
        "add workers str",
        "checkout dest None",
        "checkout workers str",
        "anonymize columns str",
        "anonymize columns int",
        "anonymize columns number",
    ],
)
def test_wrong_types_are_usage_errors(platform: Platform, tree: Path, tmp_path: Path, call: str) -> None:
    """They died with TypeError (a str of columns was even read as one column per letter)."""
    ctx = platform.context()
    (tree / "people.csv").write_bytes(b"email\nal@example.com\n")
    data.add_version(platform, ctx, tree, "ds")
    with pytest.raises(UsageError):
        _calls(platform, tree, tmp_path / "out")[call]()
    assert [v.version for v in data.list_versions(platform, ctx, "ds")] == [1]
    assert not (tmp_path / "out").exists()


def test_columns_may_be_any_iterable_of_names(platform: Platform, tree: Path, tmp_path: Path) -> None:
    ctx = platform.context()
    (tree / "people.csv").write_bytes(b"email,note\nal@example.com,bo@example.com\n")
    data.add_version(platform, ctx, tree, "ds")
    new = data.anonymize(platform, ctx, "ds@1", columns=(c for c in ["email"]), allow_unprocessed=True)
    data.checkout(platform, ctx, f"ds@{new.version}", tmp_path / "out")
    assert (tmp_path / "out" / "people.csv").read_bytes() == b"email,note\n<EMAIL>,bo@example.com\n"
