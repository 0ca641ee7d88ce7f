"""A majority deployment is an approval: the approver role is checked again in the write's own transaction,
as every mutation checks its action, so a long-lived session whose approver role was taken away since it
was resolved cannot give a candidate most of the traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelyard import registry
from modelyard.core import Platform, Role
from modelyard.core._identity import set_role
from modelyard.errors import PermissionDeniedError
from modelyard.serving import deploy
from modelyard.serving._deploy import current
from modelyard.testing import actor


def test_a_demoted_approver_cannot_deploy_a_candidate_to_most_of_the_traffic(
    platform: Platform, tmp_path: Path
) -> None:
    admin = platform.context()
    scientist = actor(platform, admin, "sci", Role.SCIENTIST)
    approver = actor(platform, admin, "appr", Role.APPROVER)
    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(model / "model.safetensors"))
    (model / "config.json").write_text("{}", encoding="utf-8")
    registry.register(platform, scientist, model, "dm")
    registry.attest(platform, approver, "dm@1", "gates", {"checks": []}, passed=True)

    set_role(platform, admin, "appr", Role.ENGINEER)  # the approver's open session still says approver
    with pytest.raises(PermissionDeniedError, match="now engineer"):
        deploy(platform, approver, "dm", version=1, mode="canary", weight=80)
    assert current(platform, admin, "dm") is None  # nothing deployed
    # what an engineer may do, it still may
    assert deploy(platform, approver, "dm", version=1, mode="canary", weight=50).weight == 50
