"""``yard monitor`` usage errors that need no model: refused before anything is read or recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.mark.parametrize("interval", ["nan", "inf", "-5", "1e12"])
def test_a_bad_interval_is_a_usage_error(tmp_path: Path, yard: Any, interval: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("model: m@1\nrules: [{name: x, when: requests > 0}]\n")
    r = yard("monitor", "run", rules, "--interval", interval, env={"YARD_HOME": str(tmp_path / "home")})
    assert r.code == 2 and "--interval" in r.error and "unexpected" not in r.error, r.error
