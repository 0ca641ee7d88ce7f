"""`yard quickstart`, the README's main command, end to end in a subprocess (fewer steps than by default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.config import load_settings
from modelyard.core import Platform, verify_chain
from modelyard.registry import history, list_versions, verify
from modelyard.serving._deploy import current

pytestmark = pytest.mark.slow

STEPS = [
    "create a fresh home",
    "generate and version the example data",
    "train the tiny FLAN-T5 recipe",
    "evaluate on the test split",
    "register a signed version and run its gates",
    "promote to production (a second person approves)",
    "optimise to INT8 ONNX and measure every variant",
    "serve it on a local port and send real requests",
    "generate shifted data and serve it",
    "detect the drift",
    "an alert rule triggers retraining on the newest data",
    "gate the retrained version and deploy it as a canary",
]


def test_quickstart_runs_every_step(tmp_path: Path) -> None:
    home = tmp_path / "qs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env.update(COLUMNS="250", NO_COLOR="1", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelyard.cli",
            "quickstart",
            "--home",
            str(home),
            "--steps",
            "200",
            "--rows",
            "800",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-5000:] + proc.stdout[-3000:]
    for step in STEPS:
        assert f"✓ {step}" in proc.stderr, step
    assert "DRIFT: input" in proc.stderr
    assert "retrain job" in proc.stderr and "passed its gates and is a 20% canary" in proc.stderr
    with Platform(load_settings(home=home)) as p:
        ctx = p.context()
        versions = list_versions(p, ctx, "quickstart")
        variants = [v.variant for v in versions]
        assert (
            variants[:3] == ["fp32", "onnx-fp32", "onnx-int8"] and variants[-1] == "fp32"
        )  # + the retrained
        for v in versions:
            verify(p, ctx, v.spec)
        production = [e for e in history(p, ctx, "quickstart", "production")]
        assert [e.by for e in production] == ["reviewer", "reviewer"]  # four eyes: never the author
        dep = current(p, ctx, "quickstart")
        assert dep is not None and dep.mode == "canary" and dep.candidate == versions[-1].version
        assert verify_chain(p, ctx).ok
    assert (home / "quickstart" / "drift.html").is_file() and (home / "quickstart" / "card.html").is_file()
    # a second run recreates its own home; a directory it did not make is refused
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "quickstart", "--home", str(other)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert refused.returncode == 2 and "not made by yard quickstart" in refused.stderr
    assert (other / "notes.txt").read_text() == "keep me"
