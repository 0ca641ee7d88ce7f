"""`yard data show` prints every profile a version can have."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.data import _manifest
from modelyard.testing import Yard


def test_show_prints_a_numeric_column_whose_mean_is_not_finite(
    yard: Yard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mean of 1e308 and 1e308 overflows, so the profile records none (null): `yard data show` died
    with an unexpected TypeError formatting it, and the version could not be shown at all."""
    monkeypatch.setattr(_manifest, "RACY_NS", 0)
    assert yard("init").code == 0
    root = tmp_path / "src"
    root.mkdir()
    (root / "big.csv").write_text("x,y\n1e308,1\n1e308,3\n")
    assert yard("data", "add", root, "--name", "big").code == 0
    r = yard("data", "show", "big@1")
    assert r.code == 0, r.err
    assert "min 1e+308, max 1e+308, mean -" in r.out
    assert "min 1, max 3, mean 2" in r.out
