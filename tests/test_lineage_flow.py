"""Lineage end to end through the real services: dataset version -> anonymised version -> run -> artifact,
and the refusal to remove a dataset version a registered model depends on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelyard
from modelyard import data
from modelyard.cli import main
from modelyard.core import Platform
from modelyard.errors import PermissionDeniedError, UsageError
from modelyard.tracking import lineage
from modelyard.tracking._lineage import add_edges


def _refs(node: object) -> list[str]:
    return sorted(c.ref for c in node.children)  # type: ignore[attr-defined]


def test_dataset_run_artifact_lineage(
    platform: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # Rich: no wrapping of digests
    ctx = platform.context()
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.csv").write_text("id,email\n1,ann@example.com\n2,bob@example.org\n")
    v1 = data.add_version(platform, ctx, src, "customers")
    clean = data.anonymize(platform, ctx, "customers@1", columns=["email"], method="hash")
    assert clean.version == 2

    local = data.get("customers@2", platform=platform, ctx=ctx)
    assert "example.com" not in (local / "train.csv").read_text()
    report = tmp_path / "report.json"
    with modelyard.Client(platform=platform) as client, client.start_run("exp", capture=False) as run:
        run.use_dataset("customers@2")
        run.log_metric("loss", 0.5, step=1)
        report.write_text(json.dumps({"rows": 2}))
        (digest,) = run.log_artifact(report)
        run_id = run.id

    up, down = lineage(platform, ctx, f"run:{run_id}")
    assert _refs(up) == ["dataset:customers@2"]
    assert _refs(up.children[0]) == [f"dataset:customers@{v1.version}"]
    assert up.children[0].children[0].relation == "anonymized"
    assert _refs(down) == [f"artifact:{digest}"]

    _, from_raw = lineage(platform, ctx, "customers@1")
    assert _refs(from_raw) == ["dataset:customers@2"]
    assert _refs(from_raw.children[0]) == [f"run:{run_id}"]

    capsys.readouterr()
    assert main(["lineage", "show", "customers@1"]) == 0
    tree = capsys.readouterr().out
    for ref in ("dataset:customers@2", f"run:{run_id}", f"artifact:{digest}"):
        assert ref in tree

    # A model registered from the run (issue 5 records this edge) protects every upstream version.
    with platform.db.write() as s:
        add_edges(s, ctx, [(f"run:{run_id}", "model:churn@1", "registered")])
    with pytest.raises(UsageError, match="model:churn@1"):
        data.remove(platform, ctx, "customers@1")
    assert [v.version for v in data.list_versions(platform, ctx, "customers")] == [1, 2]
    from modelyard.testing import actor

    engineer = actor(platform, ctx, "erin", "engineer")
    with pytest.raises(PermissionDeniedError):
        data.remove(platform, engineer, "customers@1", force=True)
    data.remove(platform, ctx, "customers@1", force=True)  # ctx is admin
    assert [v.version for v in data.list_versions(platform, ctx, "customers")] == [2]
