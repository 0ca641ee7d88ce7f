"""`modelyard.pipelines.quickstart` points this process at its own home while it runs (its job worker's
`yard train` children inherit the environment) and gives the caller's environment back, even on failure: an
SDK caller's next Platform() opened the quickstart's home, without its token."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelyard.errors import YardError
from modelyard.pipelines import quickstart


def test_the_callers_environment_comes_back_after_a_failed_quickstart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YARD_HOME", str(tmp_path / "mine"))
    monkeypatch.setenv("YARD_TOKEN", "my-token")
    monkeypatch.setenv("YARD_REGION", "Not A Region")  # the first step's settings fail on it
    before = dict(os.environ)
    with pytest.raises(YardError, match="region"):
        quickstart(tmp_path / "qs", steps=10, rows=200)
    assert dict(os.environ) == before
