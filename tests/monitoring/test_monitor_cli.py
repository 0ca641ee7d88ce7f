"""``yard monitor`` usage errors that need no model: refused before anything is read or recorded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.parametrize("interval", ["nan", "inf", "-5", "1e12"])
def test_a_bad_interval_is_a_usage_error(tmp_path: Path, yard: Any, interval: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("model: m@1\nrules: [{name: x, when: requests > 0}]\n")
    r = yard("monitor", "run", rules, "--interval", interval, env={"YARD_HOME": str(tmp_path / "home")})
    assert r.code == 2 and "--interval" in r.error and "unexpected" not in r.error, r.error


@pytest.mark.parametrize("window", ["\u00b2h", "\u0661h", "9" * 5000 + "d"])
def test_a_window_that_is_not_ascii_digits_is_a_usage_error(tmp_path: Path, yard: Any, window: str) -> None:
    expected = "longer than a year" if len(window) > 100 else "expected a number and a unit"
    # str.isdigit accepts superscripts and other scripts' digits, which int() refuses or reads; 5,000
    # digits exceed int()'s limit: each was a ValueError, reported as an unexpected error.
    for where in ("window", "cooldown"):
        rules = tmp_path / "rules.yaml"
        rules.write_text(f"model: m@1\n{where}: '{window}'\nrules: [{{name: x, when: requests > 0}}]\n")
        r = yard("monitor", "run", rules, env={"YARD_HOME": str(tmp_path / "home")})
        assert r.code == 2 and re.search(expected, r.error) and len(r.error) < 200, r.error
    r = yard("monitor", "drift", "m@1", "--window", window, env={"YARD_HOME": str(tmp_path / "home")})
    assert r.code == 2 and re.search(expected, r.error) and len(r.error) < 200, r.error
