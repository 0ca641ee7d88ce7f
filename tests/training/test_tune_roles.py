"""`tune` checks the caller's role before it reads or writes the study: a viewer's `tune --worker` wrote
failed trials into the study (one per trial asked) before the first child run was refused."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from _tiny import RECIPE  # tests/training/_tiny.py
from sqlalchemy import select

from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.core._rbac import Role
from modelyard.errors import PermissionDeniedError
from modelyard.testing import actor
from modelyard.tracking import Client
from modelyard.training._recipe import parse_recipe
from modelyard.training._tune import _space_key, storage, tune


def test_a_viewer_cannot_join_a_study(platform: Platform, tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(RECIPE))
    data["train"]["eval_every_steps"] = 4
    data["search"] = {"hyperparameters.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}
    recipe = parse_recipe(data)
    admin = platform.context()
    store = storage(platform)
    st = optuna.create_study(study_name="s", storage=store, direction="minimize")
    st.set_user_attr("parent_run", "0" * 32)
    st.set_user_attr("project", admin.project)
    st.set_user_attr("metric", recipe.checkpoints.metric)
    st.set_user_attr("space", _space_key(recipe.search))
    viewer = actor(platform, admin, "vera", Role.VIEWER)
    with Client(platform=platform) as client:
        client.ctx = viewer
        with pytest.raises(PermissionDeniedError, match=r"run\.write"):
            tune(recipe, client=client, trials=2, study="s", worker=True)
    assert optuna.load_study(study_name="s", storage=store).trials == []
    with platform.db.read() as s:
        denied = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "denied")).all()
    assert [(r.actor, r.action, r.resource) for r in denied] == [("vera", "run.write", "study:default/s")]
