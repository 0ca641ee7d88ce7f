"""An alert rules file with several mistakes: each was reported alone (the first a check met), so a file
with three mistakes took three fix-and-rerun rounds. Now every problem is listed in one error, each named
by its rule (index) and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard.errors import UsageError, ValidationError
from modelyard.monitoring._alerts import load_alerts


def test_every_rule_problem_is_named_in_one_error(tmp_path: Path) -> None:
    rules = [
        {"name": "a", "when": "drift.foo > 0"},  # unknown signal
        {"name": "b", "when": "requests => 3"},  # no such operator
        {"name": "c", "when": "latency.p95_ms > 500", "min_samples": -1},
        {"name": "d", "when": "drift.share > 1"},  # can never hold
        {"name": "e", "when": "quality_drop.rouge_l > 0.1"},  # not a metric monitoring scores
        {"name": "f", "when": "requests < 1", "min_samples": 10},  # requests takes no min_samples
        {"name": "g", "when": "requests > 1"},  # fine
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": rules}))
    with pytest.raises(ValidationError) as info:
        load_alerts(path)
    said = info.value.message
    assert "6 problems" in said, said
    for where, what in [
        ("rules[0].when", "unknown signal 'drift.foo'"),
        ("rules[1].when", "is not a condition"),
        ("rules[2].min_samples", "greater than or equal to 1"),
        ("rules[3].when", "can never hold"),
        ("rules[4].when", "not a metric monitoring scores"),
        ("rules[5].min_samples", "does not apply to requests"),
    ]:
        assert f"{where}: " in said and what in said, (where, said)
    assert "rules[6]" not in said


def test_every_policy_problem_is_named_in_one_error(tmp_path: Path) -> None:
    rules = [
        {"name": "x", "when": "requests > 1", "actions": ["webhook"]},  # no webhook section
        {"name": "x", "when": "requests > 2"},  # named twice
        {"name": "y", "when": "requests > 3", "actions": ["log", "retrain"]},  # no retrain section
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"model": "m@1", "window": "soon", "cooldown": "1x", "rules": rules}))
    with pytest.raises(UsageError) as info:
        load_alerts(path)
    said = info.value.message
    assert "5 problems" in said, said
    for where, what in [
        ("window", "'soon'"),
        ("cooldown", "'1x'"),
        ("rules[0] ('x').actions", "no webhook section"),
        ("rules[1] ('x').name", "two rules are named 'x'"),
        ("rules[2] ('y').actions", "no retrain section"),
    ]:
        assert f"{where}: " in said and what in said, (where, said)


def test_one_problem_is_still_said_alone(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    rules = [{"name": "x", "when": "requests > 1", "actions": ["retrain"]}]
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": rules}))
    with pytest.raises(UsageError, match="no retrain section") as info:
        load_alerts(path)
    assert "problems" not in info.value.message
