"""Alert and retrain state belongs to its project: it was keyed by the model's name alone, so a rule firing
in one project kept the rule of the same name on another project's model of the same name quiet (and a
retrain pending in one stopped the other's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform, create_project
from modelyard.monitoring._alerts import load_alerts, run_once
from modelyard.testing import TrainedModel

pytestmark = pytest.mark.slow


def test_a_rule_firing_in_one_project_does_not_quiet_another(trained: TrainedModel, tmp_path: Path) -> None:
    with Platform(load_settings(home=trained.home)) as p:
        mine = p.context()
        create_project(p, mine, "tenant-b")
        theirs = p.context(project="tenant-b")
        for ctx in (mine, theirs):
            registry.register(p, ctx, trained.model_dir, "mon-tenant")
        path = tmp_path / "rules.yaml"
        rules = {"model": "mon-tenant@1", "rules": [{"name": "x", "when": "requests >= 0"}]}
        path.write_text(yaml.safe_dump(rules))
        assert [f.rule for f in run_once(p, mine, load_alerts(path)).fired] == ["x"]
        other = run_once(p, theirs, load_alerts(path))
        assert [f.rule for f in other.fired] == ["x"] and other.quiet == []
        assert run_once(p, mine, load_alerts(path)).quiet == ["x"]  # its own cooldown still holds
