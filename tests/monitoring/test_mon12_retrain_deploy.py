"""A retrain whose version was registered and passed its gates, but whose deploy hit a store outage: the
retrain was failed, so a transient outage cost a whole new training run. Now it stays pending and the next
run deploys it, once: a deploy that committed before its error is not made again."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from test_mon11_retrain_register import CHILD_WITH_MODEL, retrain_ran

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.monitoring._alerts import AlertPolicy, _key, run_once
from modelyard.serving._deploy import current, deploy, rollback_candidate
from modelyard.training._jobs import get_job


@pytest.fixture
def s3_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """A platform whose artifacts (and its jobs') are in S3 (moto), as in the mon11 register outage test."""
    from modelyard.testing import make_platform
    from modelyard.testing._s3server import DUMMY_AWS_ENV, moto_s3_server

    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server", reason="needs moto[server]")
    for name, value in {**DUMMY_AWS_ENV, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    with moto_s3_server() as url:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="mon12")
        monkeypatch.setenv("YARD_ARTIFACT_URI", "s3://mon12/artifacts")
        monkeypatch.setenv("YARD_S3_ENDPOINT_URL", url)
        platform = make_platform(tmp_path / "home")
        yield platform
        platform.close()


@contextlib.contextmanager
def objects_unavailable(upstream: str) -> Iterator[str]:
    """An endpoint in front of the S3 server at ``upstream`` that goes down for large stored objects (model
    weights) once each has been read: gating downloads the version and is served, the deploy that follows
    reads every byte again to verify it and gets 503 Service Unavailable. (Small objects, such as the
    manifest that several steps read, stay up.)"""
    target = urlsplit(upstream)
    served: set[tuple[str, str | None]] = set()

    class Handler(BaseHTTPRequestHandler):
        def forward(self) -> None:
            read = (self.path, self.headers.get("Range"))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conn = http.client.HTTPConnection(target.hostname or "", target.port)
            try:
                conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                got = conn.getresponse()
                status, headers, payload = got.status, dict(got.getheaders()), got.read()
            finally:
                conn.close()
            weights = self.command == "GET" and "/artifacts/objects/" in self.path and len(payload) > 65536
            if weights and read in served:
                payload = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
                status, headers = 503, {}
            elif weights:
                served.add(read)
            self.answer(status, headers, payload)

        def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def deploys_of(platform: Platform, version: int) -> int:
    """How many deploys of m11@version committed (each writes its audit record in its own transaction)."""
    with platform.db.read() as s:
        details = s.execute(
            select(AuditRecord.detail).where(
                AuditRecord.action == "model.deploy",
                AuditRecord.resource == "deployment:m11",
                AuditRecord.outcome == "ok",
            )
        ).scalars()
        return sum(json.loads(d).get("version") == version for d in details)


def deploy_fails_for_an_outage(
    platform: Platform, tmp_path: Path, model_dir: Path
) -> tuple[AlertPolicy, datetime, int]:
    """The job trained a real model, registered as m11@2 (by a run that then stopped); then a monitor whose
    artifact store goes down after gating: m11@2 passes its gates and its deploy fails."""
    ctx = platform.context()
    (tmp_path / "retrain").mkdir()  # model_dir is tmp_path/model, where retrain_ran puts the monitored one
    policy, started, job_id = retrain_ran(platform, tmp_path / "retrain", [CHILD_WITH_MODEL, str(model_dir)])
    run_id = get_job(platform, ctx, job_id).run_id
    assert run_id is not None
    assert registry.register(platform, ctx, run_id, "m11").version == 2
    with objects_unavailable(os.environ["YARD_S3_ENDPOINT_URL"]) as flaky:
        cut_off = Platform(load_settings(home=tmp_path / "home", s3_endpoint_url=flaky))
        try:
            result = run_once(cut_off, cut_off.context(), policy, now=started + timedelta(minutes=1))
        finally:
            cut_off.close()
    [said] = result.retrains
    assert "m11@2 passed its gates but could not be deployed yet" in said and "S3" in said, said
    state = json.loads(platform.meta(_key("retrain", ctx.project_id, "m11")) or "{}")
    assert state["state"] == "registered" and state["version"] == 2, state
    with platform.db.read() as s:
        details = s.execute(
            select(AuditRecord.detail).where(
                AuditRecord.action == "monitor.retrain",
                AuditRecord.resource == "model:m11@1",
                AuditRecord.outcome == "error",
            )
        ).scalars()
        assert [json.loads(d)["retry"] for d in details] == [True]
    return policy, started, job_id


def test_a_store_outage_while_deploying_keeps_the_retrain_for_the_next_run(
    s3_platform: Platform, tmp_path: Path, model_dir: Path
) -> None:
    platform, ctx = s3_platform, s3_platform.context()
    policy, started, _ = deploy_fails_for_an_outage(platform, tmp_path, model_dir)
    assert deploys_of(platform, 2) == 0

    # The store is back: the next run deploys the version the job trained (no new retrain, no new version).
    result = run_once(platform, ctx, policy, now=started + timedelta(minutes=2))
    assert result.retrains == ["retrained m11@2 passed its gates and is a 10% canary"], result.retrains
    state = json.loads(platform.meta(_key("retrain", ctx.project_id, "m11")) or "{}")
    assert state["state"] == "deployed", state
    info = current(platform, ctx, "m11")
    assert info is not None and (info.mode, info.candidate, info.weight) == ("canary", 2, 10)
    assert deploys_of(platform, 2) == 1
    assert [v.version for v in registry.list_versions(platform, ctx, "m11")] == [1, 2]


def test_a_deploy_that_committed_before_its_error_is_not_made_twice(
    s3_platform: Platform, tmp_path: Path, model_dir: Path
) -> None:
    platform, ctx = s3_platform, s3_platform.context()
    policy, started, job_id = deploy_fails_for_an_outage(platform, tmp_path, model_dir)
    # What the failed deploy had committed before its error (a connection lost after the commit).
    deploy(platform, ctx, "m11", version=2, mode="canary", weight=10, reason=f"retrained (job {job_id})")
    generation = current(platform, ctx, "m11").generation  # type: ignore[union-attr]

    result = run_once(platform, ctx, policy, now=started + timedelta(minutes=2))
    assert result.retrains == ["retrained m11@2 passed its gates and is deployed already (canary at 10%)"]
    state = json.loads(platform.meta(_key("retrain", ctx.project_id, "m11")) or "{}")
    assert state["state"] == "deployed", state
    assert deploys_of(platform, 2) == 1
    assert current(platform, ctx, "m11").generation == generation  # type: ignore[union-attr]


def test_a_committed_deploy_rolled_back_since_is_not_made_again(
    s3_platform: Platform, tmp_path: Path, model_dir: Path
) -> None:
    # The deploy committed before its error; before the next run, a server rolled the canary back for
    # breaching its SLOs. The next run saw m11@2 not served and deployed it again: the rolled-back model
    # came back.
    platform, ctx = s3_platform, s3_platform.context()
    policy, started, job_id = deploy_fails_for_an_outage(platform, tmp_path, model_dir)
    info = deploy(
        platform, ctx, "m11", version=2, mode="canary", weight=10, reason=f"retrained (job {job_id})"
    )
    assert info.candidate_generation is not None
    assert rollback_candidate(platform, ctx, "m11", info.candidate_generation, "error rate 12% > 5%")

    result = run_once(platform, ctx, policy, now=started + timedelta(minutes=2))
    assert result.retrains == [
        "retrained m11@2 passed its gates and was deployed already, but has been rolled back since "
        "(automatic rollback: error rate 12% > 5%); it is not deployed again"
    ], result.retrains
    state = json.loads(platform.meta(_key("retrain", ctx.project_id, "m11")) or "{}")
    assert state["state"] == "deployed", state
    assert deploys_of(platform, 2) == 1
    served = current(platform, ctx, "m11")
    assert served is not None and (served.mode, served.candidate) == ("off", None)
    with platform.db.read() as s:
        [detail] = s.execute(
            select(AuditRecord.detail).where(
                AuditRecord.action == "monitor.retrain", AuditRecord.outcome == "ok"
            )
        ).scalars()
    assert json.loads(detail)["rolled_back"] is True
    # and later runs leave it so
    again = run_once(platform, ctx, policy, now=started + timedelta(minutes=3))
    assert again.retrains == [] and deploys_of(platform, 2) == 1
