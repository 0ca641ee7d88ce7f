"""The README opens with exactly two set-up commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"# modelyard\n\n```bash\n(.*?)```", readme, re.S)
    assert match, "README must open with its title and then a ```bash block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_readme_opens_with_two_setup_commands() -> None:
    main_job, tests = _setup_commands()
    assert main_job.split("&&")[-1].strip() == "yard quickstart"
    assert tests.rstrip().endswith("pytest")


def test_ci_runs_the_readme_test_command() -> None:
    _, tests = _setup_commands()
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
