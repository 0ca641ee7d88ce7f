"""Four eyes and the job queue: a queued job runs with its worker's identity, so the run it records names the
worker, not whoever submitted the training. The submitter trained the model all the same (their recipe,
their data): they must not approve it for production, though someone else registered it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard import registry
from modelyard.core import Platform, Role
from modelyard.core._identity import create_token
from modelyard.errors import PermissionDeniedError
from modelyard.testing import JOB_RECIPE, actor
from modelyard.training import _jobs

# The job's process, as `yard train` under a worker does it: a run made with the worker's identity
# (YARD_TOKEN from its environment) and attached to the job it runs.
CHILD = r"""
import os
from modelyard.core import Platform
from modelyard.tracking._store import create_run
from modelyard.training import _jobs
with Platform() as p:
    ctx = p.context()
    run_id = create_run(p, ctx, "jobs-test")
    _jobs.attach_run(p, ctx, os.environ["YARD_JOB_ID"], run_id)
    print(run_id, flush=True)
"""


def test_who_submitted_the_training_job_cannot_approve_its_model(
    platform: Platform, tmp_path: Path, tiny_model: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.data import add_version
    from modelyard.training import write_dataset

    admin = platform.context()
    ann = actor(platform, admin, "ann", Role.APPROVER)
    bob = actor(platform, admin, "bob", Role.APPROVER)
    sci = actor(platform, admin, "sci", Role.SCIENTIST)
    actor(platform, admin, "wkr", Role.ENGINEER)
    write_dataset(tmp_path / "normalise", 40, seed=1)
    add_version(platform, admin, tmp_path / "normalise", "normalise")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(JOB_RECIPE)

    job = _jobs.submit_job(platform, ann, recipe)
    _, token = create_token(platform, admin, "wkr")
    monkeypatch.setenv("YARD_TOKEN", token)  # the worker's identity, which its jobs inherit
    worker_ctx = platform.context(token=token)
    worker = _jobs.Worker(
        platform,
        worker_ctx,
        executor=lambda *_: [sys.executable, "-c", CHILD],
        max_jobs=1,
        exit_when_idle=True,
    )
    assert worker.run() == 1
    info = _jobs.get_job(platform, admin, job.id)
    assert info.status == "SUCCEEDED" and info.run_id is not None

    model = tiny_model()
    registry.register(platform, sci, model, "jq", trained_by=info.run_id)

    def gates(*_: object) -> tuple[bool, str]:
        return True, ""

    registry.attest(platform, bob, "jq@1", "gates", {"checks": []}, passed=True)  # a passing gate run
    with pytest.raises(PermissionDeniedError, match="ann submitted job"):
        registry.promote(platform, ann, "jq@1", "production", gates=gates)
    with pytest.raises(PermissionDeniedError, match="four eyes"):
        registry.attest(platform, ann, "jq@1", "gates", {"checks": []}, passed=True)
    # Once the run is deleted its job no longer names it; the audit record of the attachment still does.
    from modelyard.tracking._store import delete_run

    delete_run(platform, admin, info.run_id)
    assert _jobs.get_job(platform, admin, job.id).run_id is None
    with pytest.raises(PermissionDeniedError, match="ann submitted job"):
        registry.promote(platform, ann, "jq@1", "production", gates=gates)
    # a second approver, who neither trained nor registered it, may
    assert registry.promote(platform, bob, "jq@1", "production", gates=gates).version == 1
