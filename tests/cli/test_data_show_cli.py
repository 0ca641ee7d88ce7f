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


def test_control_characters_of_a_table_are_not_sent_to_the_terminal(
    yard: Yard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV header is data from anywhere: its escape sequences (here one that sets the terminal's
    title; OSC 52 sets its clipboard) reached the terminal of whoever ran `yard data show`, `diff` or
    `scan`. They are printed escaped."""
    monkeypatch.setattr(_manifest, "RACY_NS", 0)
    assert yard("init").code == 0
    root = tmp_path / "src"
    root.mkdir()
    (root / "h.csv").write_text("id,\x1b]0;pwned\x07name,mail\u202e\n1,x,al@example.com\n")
    assert yard("data", "add", root, "--name", "esc").code == 0
    (root / "h.csv").write_text("id\n1\n")
    assert yard("data", "add", root, "--name", "esc").code == 0
    for args in (("show", "esc@1"), ("diff", "esc@1", "esc@2"), ("scan", "esc@1")):
        r = yard("data", *args)
        assert r.code == 0, r.err
        assert "\x1b" not in r.out + r.err and "\x07" not in r.out + r.err and "\u202e" not in r.out
        assert "\\x1b]0;pwned\\x07name" in r.out or args[0] == "scan"
    assert "mail\\u202e" in yard("data", "scan", "esc@1").out


def test_show_prints_the_top_values_of_a_category_column(
    yard: Yard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile records each string column's most frequent values; `yard data show` printed only how many
    distinct values there were."""
    monkeypatch.setattr(_manifest, "RACY_NS", 0)
    assert yard("init").code == 0
    root = tmp_path / "src"
    root.mkdir()
    (root / "c.csv").write_text("city\n" + "Dubai\n" * 5 + "Oslo\n" * 3 + "Lima\n" * 2 + "Pune\n")
    assert yard("data", "add", root, "--name", "cities").code == 0
    r = yard("data", "show", "cities@1")
    assert r.code == 0, r.err
    assert "4 distinct; top 'Dubai' x5, 'Oslo' x3, 'Lima' x2" in r.out and "Pune" not in r.out
