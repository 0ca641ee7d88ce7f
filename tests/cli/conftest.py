"""The `yard` fixture shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.testing import Yard, cli_runner


@pytest.fixture
def yard(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Yard:
    """Run ``yard ARGS`` in this process; ``env`` sets (or with None, unsets) variables for that call."""
    return cli_runner(capsys, monkeypatch, tmp_path)
