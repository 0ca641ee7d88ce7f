"""`yard lineage show` piped into a file or grep prints every ref whole (artifact:SHA256 included)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from modelyard.core import Platform
from modelyard.testing import Yard
from modelyard.tracking import Client


def test_a_piped_lineage_tree_keeps_its_refs_whole(yard: Yard, tmp_path: Path) -> None:
    assert yard("init").code == 0
    (tmp_path / "tickets").mkdir()
    (tmp_path / "tickets" / "t.csv").write_text("id,text\n1,hello\n")
    assert yard("data", "add", str(tmp_path / "tickets"), "--name", "support-tickets").code == 0
    report = tmp_path / "eval.json"
    report.write_text('{"rougeL": 0.4}\n')
    with (
        Platform() as platform,
        Client(platform=platform) as client,
        client.start_run("lineage-pipe", capture=False) as run,
    ):
        run.use_dataset("support-tickets@1")
        run.log_artifact(report)
    digest = hashlib.sha256(report.read_bytes()).hexdigest()
    # Rich draws a tree 80 columns wide where stdout is not a terminal: the artifact's digest (at depth 2,
    # 75 characters with its prefix) lost its end, and its relation went with it.
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "lineage", "show", "support-tickets@1"],
        capture_output=True,
        text=True,
        env={**env, "NO_COLOR": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"artifact:{digest}  (output)" in done.stdout, done.stdout
    assert f"run:{run.id}  (input)" in done.stdout, done.stdout
