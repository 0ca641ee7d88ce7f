"""A retrain whose job succeeded but whose model cannot be registered: register's error escaped
advance_retrains, so the retrain stayed "queued" for ever, every later monitor run failed the same way, and
no later alert could start a new retrain of the model (one was always pending)."""

from __future__ import annotations

import copy
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.core._platform import utcnow
from modelyard.monitoring._alerts import AlertPolicy, _key, load_alerts, run_once
from modelyard.testing import TINY_RECIPE
from modelyard.training import Worker, write_dataset
from modelyard.training._jobs import cancel_job, get_job

# The job's process: a FINISHED tracking run that stored no model, attached to the job as `yard train` does.
CHILD = """
from modelyard.core import Platform
from modelyard.tracking import Client
from modelyard.training._jobs import attach_run, job_id_from_env

platform = Platform()
with Client(platform) as client:
    with client.start_run("retrain") as run:
        run.log_metric("loss", 1.0)
    attach_run(platform, client.ctx, job_id_from_env(), run.id)
platform.close()
"""


def retrain_ran(platform: Platform, tmp_path: Path, child: list[str]) -> tuple[AlertPolicy, datetime, int]:
    """Model m11@1 with a rule that always retrains; its alert fired 3 hours ago (its cooldown is over now)
    and its job ran ``child`` (python -c ...) to success. Returns the rules, when they fired, the job."""
    from modelyard.data import add_version

    ctx = platform.context()
    files = write_dataset(tmp_path / "norm", 60, seed=1)
    add_version(platform, ctx, files[0].parent, "norm")
    model = tmp_path / "model"  # the monitored version: any valid model directory (it is never loaded)
    model.mkdir()
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(model / "model.safetensors"))
    (model / "config.json").write_text("{}", encoding="utf-8")
    registry.register(platform, ctx, model, "m11")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(copy.deepcopy(TINY_RECIPE)))
    gates = {"data": {"dataset": "norm@1", "file": "test.jsonl"}, "size": {"max_mb": 100}}
    (tmp_path / "gates.yaml").write_text(yaml.safe_dump(gates))
    rules = {
        "model": "m11@1",
        "cooldown": "1h",
        "rules": [{"name": "always", "when": "requests >= 0", "actions": ["retrain"]}],
        "retrain": {"recipe": "recipe.yaml", "policy": "gates.yaml"},
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    policy = load_alerts(tmp_path / "rules.yaml")
    started = utcnow() - timedelta(hours=3)
    [outcome] = run_once(platform, ctx, policy, now=started).fired[0].actions
    assert outcome.startswith("retrain job"), outcome
    job_id = int(outcome.split()[2])
    Worker(
        platform,
        ctx,
        cpus=1,
        exit_when_idle=True,
        executor=lambda job, recipe: [sys.executable, "-c", *child],
    ).run()
    job = get_job(platform, ctx, job_id)
    assert job.status == "SUCCEEDED" and job.run_id is not None, job
    return policy, started, job_id


def test_a_retrain_whose_model_cannot_be_registered_fails_and_frees_the_next_retrain(
    platform: Platform, tmp_path: Path
) -> None:
    ctx = platform.context()
    policy, started, job_id = retrain_ran(platform, tmp_path, [CHILD])

    # The job succeeded, but its run stored no model: said and audited, not raised, and the retrain failed.
    result = run_once(platform, ctx, policy, now=started + timedelta(minutes=1))  # the rule cools down
    assert result.quiet == ["always"]
    [said] = result.retrains
    assert f"retrain job {job_id} succeeded, but its model could not be registered" in said, said
    assert "stored no model" in said
    state = json.loads(platform.meta(_key("retrain", ctx.project_id, "m11")) or "{}")
    assert state["state"] == "failed" and "stored no model" in state["error"], state
    with platform.db.read() as s:
        records = s.execute(
            select(AuditRecord.outcome, AuditRecord.detail).where(
                AuditRecord.action == "monitor.retrain", AuditRecord.resource == "model:m11@1"
            )
        ).all()
    [(outcome_, detail)] = records
    assert outcome_ == "error"
    assert json.loads(detail)["job"] == job_id and "stored no model" in json.loads(detail)["error"]
    assert [v.version for v in registry.list_versions(platform, ctx, "m11")] == [1]

    # Nothing pending any more: the next run says nothing of it, and the next alert starts a new retrain.
    assert run_once(platform, ctx, policy, now=started + timedelta(minutes=2)).retrains == []
    later = run_once(platform, ctx, policy)
    [again] = later.fired[0].actions
    assert again.startswith("retrain job") and int(again.split()[2]) != job_id, again
    assert later.retrains == [f"retrain job {again.split()[2]} is queued"]
    cancel_job(platform, ctx, again.split()[2])


# The job's process when training worked: a FINISHED run whose model/ holds the model directory given.
CHILD_WITH_MODEL = """
import sys
from modelyard.core import Platform
from modelyard.tracking import Client
from modelyard.training._jobs import attach_run, job_id_from_env

platform = Platform()
with Client(platform) as client:
    with client.start_run("retrain") as run:
        run.log_artifact(sys.argv[1], "model")
    attach_run(platform, client.ctx, job_id_from_env(), run.id)
platform.close()
"""


def test_a_store_outage_while_registering_keeps_the_retrain_for_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BackendError is an outage, not a verdict on the model: said and audited, the retrain stays queued,
    and the next run registers the very model the job trained (no new retrain)."""
    import socket

    from modelyard.config import load_settings
    from modelyard.testing import make_platform
    from modelyard.testing._s3server import DUMMY_AWS_ENV, moto_s3_server

    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server", reason="needs moto[server]")
    for name, value in {**DUMMY_AWS_ENV, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    with moto_s3_server() as url:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="mon11")
        # The platform (and the job's process) store artifacts in S3.
        monkeypatch.setenv("YARD_ARTIFACT_URI", "s3://mon11/artifacts")
        monkeypatch.setenv("YARD_S3_ENDPOINT_URL", url)
        platform = make_platform(tmp_path / "home")
        ctx = platform.context()
        policy, started, job_id = retrain_ran(platform, tmp_path, [CHILD_WITH_MODEL, str(tmp_path / "model")])

        # A monitor that cannot reach the store: nothing registered, said and audited, still queued.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
        cut_off = Platform(load_settings(home=tmp_path / "home", s3_endpoint_url=closed))
        try:
            result = run_once(cut_off, cut_off.context(), policy, now=started + timedelta(minutes=1))
        finally:
            cut_off.close()
        [said] = result.retrains
        assert f"retrain job {job_id} succeeded, but its model could not be registered yet" in said, said
        assert "S3" in said
        state = json.loads(platform.meta(_key("retrain", ctx.project_id, "m11")) or "{}")
        assert state["state"] == "queued" and state["job"] == job_id, state
        with platform.db.read() as s:
            [(outcome_, detail)] = s.execute(
                select(AuditRecord.outcome, AuditRecord.detail).where(
                    AuditRecord.action == "monitor.retrain", AuditRecord.resource == "model:m11@1"
                )
            ).all()
        assert outcome_ == "error" and json.loads(detail)["retry"] is True
        assert [v.version for v in registry.list_versions(platform, ctx, "m11")] == [1]

        # The store is back: the next run registers the job's model (and goes on to gate it).
        run_once(platform, ctx, policy, now=started + timedelta(minutes=2))
        assert [v.version for v in registry.list_versions(platform, ctx, "m11")] == [1, 2]
        state = json.loads(platform.meta(_key("retrain", ctx.project_id, "m11")) or "{}")
        assert state["state"] != "queued" and state["version"] == 2, state
        platform.close()


def test_a_model_already_registered_from_the_jobs_run_is_not_registered_twice(
    platform: Platform, tmp_path: Path
) -> None:
    """A monitor that registered the job's model but died (or could not record it) before saying so left the
    retrain queued: the next run takes that version up rather than registering a second copy."""
    ctx = platform.context()
    policy, started, job_id = retrain_ran(platform, tmp_path, [CHILD_WITH_MODEL, str(tmp_path / "model")])
    run_id = get_job(platform, ctx, job_id).run_id
    assert run_id is not None
    registry.register(platform, ctx, run_id, "m11")  # what the monitor that died had done
    result = run_once(platform, ctx, policy, now=started + timedelta(minutes=1))
    assert [v.version for v in registry.list_versions(platform, ctx, "m11")] == [1, 2], result.retrains
    state = json.loads(platform.meta(_key("retrain", ctx.project_id, "m11")) or "{}")
    assert state["state"] != "queued" and state["version"] == 2, state
