"""A rule fires only on a signal resting on at least its ``min_samples`` observations: a p95 of three
requests (or a ROUGE of one feedback) is noise, and its alert could start a costly retrain."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.errors import UsageError, ValidationError
from modelyard.monitoring._alerts import load_alerts, run_once
from modelyard.serving._predlog import PredictionLog
from modelyard.testing import TrainedModel

pytestmark = pytest.mark.slow


def _log(p: Platform, n: int, start: int) -> None:
    # Request ids are unique in the whole log, which this test shares with the other monitoring tests.
    plog = PredictionLog(p, p.context(), flush_s=60)
    for i in range(start, start + n):
        plog.add(f"few{i:023d}", "mon-few", 1, "stable", ["in"], ["out"], 900.0)
    plog.close()


def test_a_rule_on_too_few_samples_is_not_fired_and_says_so(trained: TrainedModel, tmp_path: Path) -> None:
    with Platform(load_settings(home=trained.home)) as p:
        ctx = p.context()
        registry.register(p, ctx, trained.model_dir, "mon-few")
        _log(p, 3, 0)
        path = tmp_path / "rules.yaml"
        rules = [
            {"name": "slow", "when": "latency.p95_ms > 500", "min_samples": 5},
            {"name": "traffic", "when": "requests >= 1"},
        ]
        path.write_text(yaml.safe_dump({"model": "mon-few@1", "rules": rules}))
        first = run_once(p, ctx, load_alerts(path))
        assert [f.rule for f in first.fired] == ["traffic"]
        [said] = first.unjudged
        assert "'slow'" in said and "on 3 samples" in said and "min_samples 5" in said
        _log(p, 2, 3)
        second = run_once(p, ctx, load_alerts(path))
        assert [f.rule for f in second.fired] == ["slow"] and second.unjudged == []  # exactly its minimum


def test_requests_is_a_count_that_takes_no_min_samples(tmp_path: Path) -> None:
    # `requests < 1` must fire on no traffic at all: the count is exact, whatever its size.
    path = tmp_path / "rules.yaml"
    rule = {"name": "silent", "when": "requests < 1", "min_samples": 10}
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": [rule]}))
    with pytest.raises(UsageError, match=r"rules\[0\]\.min_samples: does not apply to requests"):
        load_alerts(path)


@pytest.mark.parametrize("value", [0, -1, "ten", 1.5, True])
def test_a_min_samples_that_is_not_a_positive_count_is_refused(tmp_path: Path, value: object) -> None:
    path = tmp_path / "rules.yaml"
    rule = {"name": "x", "when": "requests > 0", "min_samples": value}
    path.write_text(yaml.safe_dump({"model": "m@1", "rules": [rule]}))
    with pytest.raises((UsageError, ValidationError), match="min_samples"):
        load_alerts(path)
