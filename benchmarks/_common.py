"""Pieces the benchmark scripts share: subprocess steps, flushing, and a fresh DVC repository."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def sync() -> None:
    """Flush dirty pages left by earlier steps so that no tool pays for another's writeback."""
    subprocess.run(["sync"], check=True)


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {proc.stderr.strip()}")


def compile_packages(*names: str) -> None:
    """Byte-compile installed packages, as ``pip install`` does for a wheel.

    A CLI run pays for compiling any module whose ``.pyc`` is missing, and an editable install with
    PYTHONDONTWRITEBYTECODE set (as in this repository's environment) never writes them: modelyard
    would compile its sources on every ``yard`` call while DVC's wheel came compiled. Compiling both
    first (a no-op where up to date) makes the CLIs start alike."""
    for name in names:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", location], check=True, capture_output=True
            )


def dvc_available() -> bool:
    return importlib.util.find_spec("dvc") is not None


def dvc_repo(scratch: Path) -> tuple[Path, dict[str, str], list[str]]:
    """A fresh `git init` + `dvc init --no-scm` repository in ``scratch``: (repo, env, dvc command)."""
    repo = scratch / "repo"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "init", "-q"], cwd=repo, env=env)
    run([*dvc, "init", "--no-scm", "-q"], cwd=repo, env=env)
    run([*dvc, "config", "core.analytics", "false"], cwd=repo, env=env)
    # Keep DVC's state database inside the scratch directory, so it starts empty and is cleaned up.
    run([*dvc, "config", "--local", "core.site_cache_dir", scratch / "site-cache"], cwd=repo, env=env)
    return repo, env, dvc
