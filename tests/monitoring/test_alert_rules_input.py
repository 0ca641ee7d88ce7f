"""Alert rule files that are hostile or cannot mean anything: refused at load, quickly, with one clear error
(no trained model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.errors import ValidationError
from modelyard.monitoring._alerts import load_alerts


def alias_bomb(levels: int) -> str:
    """A few hundred bytes of YAML whose anchors stand for 9 ** levels strings (PyYAML shares them)."""
    text = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text


@pytest.mark.parametrize("where", ["model: *a9", "rules: *a9", "rules: [{name: *a9, when: requests > 1}]"])
def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path: Path, where: str) -> None:
    # 9 ** 10 strings: showing the offending value in the error used to repr all of them (hours).
    path = tmp_path / "rules.yaml"
    text = alias_bomb(10) + ("model: m@1\n" if not where.startswith("model") else "") + where + "\n"
    if where.startswith("model"):
        text += "rules: [{name: r, when: requests > 1}]\n"
    path.write_text(text)
    with pytest.raises(ValidationError, match="invalid alert rules") as info:
        load_alerts(path)
    assert len(info.value.message) < 2000
