"""Alert rule files that are hostile or cannot mean anything: refused at load, quickly, with one clear error
(no trained model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard.errors import UsageError, ValidationError
from modelyard.monitoring._alerts import load_alerts

EXAMPLES = Path(__file__).parents[2] / "examples" / "flan-t5"


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


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("drift.share > 1", "between 0 and 1"),
        ("drift.input >= 2", "between 0 and 1"),
        ("quality_drop.bleu > 5", r"rates are in \[0, 1\]"),  # BLEU on sacrebleu's 0-100 scale
        ("quality.rougeL >= 30", r"rates are in \[0, 1\]"),
        ("requests < 0", "at least 0"),
        ("latency.p95_ms <= -1", "at least 0"),
        ("quality.gen_len < 0", "at least 0"),
    ],
)
def test_a_rule_that_can_never_fire_is_refused(tmp_path: Path, when: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": [{"name": "x", "when": when}]}))
    with pytest.raises(UsageError, match=f"can never hold.*{message}|{message}.*can never hold"):
        load_alerts(path)


@pytest.mark.parametrize(
    "when",
    [
        "drift.share >= 1",
        "drift.input > 0",
        "drift.output < 1",
        "quality_drop.bleu > -0.5",
        "quality_drop.gen_len < -3",
        "quality.exact_match <= 0",
        "requests <= 0",
        "latency.p50_ms > 0",
    ],
)
def test_rules_at_the_edge_of_a_signals_range_are_kept(tmp_path: Path, when: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": [{"name": "x", "when": when}]}))
    assert load_alerts(path).rules[0].when == when


@pytest.mark.parametrize("where", ["when", "model"])
def test_a_huge_string_is_refused_without_being_echoed(tmp_path: Path, where: str) -> None:
    # A 1 MiB file may hold a 900 KB condition or model spec; the one-line error repeated all of it.
    rule = {"name": "x", "when": "a" * 900_000 if where == "when" else "requests > 1"}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"model": "m" * 900_000 if where == "model" else "m@1", "rules": [rule]}))
    with pytest.raises(ValidationError, match="at most") as info:
        load_alerts(path)
    assert len(info.value.message) < 500, info.value.message[:500]


def test_an_action_named_twice_in_a_rule_is_refused(tmp_path: Path) -> None:
    # It ran twice for one alert (two webhook calls, a second retrain attempt); the retry bookkeeping,
    # which counts actions by name, then dropped both from "pending" after the first.
    path = tmp_path / "rules.yaml"
    rule = {"name": "x", "when": "requests > 1", "actions": ["log", "log"]}
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": [rule]}))
    with pytest.raises(ValidationError, match=r"rules\[0\]\.actions: 'log' is named twice"):
        load_alerts(path)


@pytest.mark.parametrize(
    ("recipe", "gates", "message"),
    [
        ("data: [unclosed\n", None, r"recipe\.yaml: not valid YAML"),
        ("modle: {}\n", None, r"recipe\.yaml: invalid recipe"),
        (None, "gates: {bleu: high}\n", r"gates\.yaml: "),
    ],
)
def test_a_retrain_recipe_or_gate_policy_that_cannot_load_is_refused_with_the_rules(
    tmp_path: Path, recipe: str | None, gates: str | None, message: str
) -> None:
    # They were only checked to be files: a typo surfaced when the rule fired, as a failed retrain
    # tried again at every run while the drift lasted.
    (tmp_path / "recipe.yaml").write_text(recipe or (Path(EXAMPLES) / "recipe-tiny.yaml").read_text())
    (tmp_path / "gates.yaml").write_text(gates or (Path(EXAMPLES) / "gates.yaml").read_text())
    rule = {"name": "x", "when": "drift.input > 0", "actions": ["retrain"]}
    retrain = {"recipe": "recipe.yaml", "policy": "gates.yaml"}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": [rule], "retrain": retrain}))
    with pytest.raises(ValidationError, match=message):
        load_alerts(path)


def test_the_example_retrain_recipe_and_gate_policy_load(tmp_path: Path) -> None:
    for name in ("recipe-tiny.yaml", "gates.yaml"):
        (tmp_path / name).write_text((Path(EXAMPLES) / name).read_text())
    rule = {"name": "x", "when": "drift.input > 0", "actions": ["retrain"]}
    retrain = {"recipe": "recipe-tiny.yaml", "policy": "gates.yaml"}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": [rule], "retrain": retrain}))
    assert load_alerts(path).retrain is not None
