"""Concurrent adds to one dataset from several processes get versions 1..N: no gaps, no duplicates."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.data import list_versions
from modelyard.testing import make_platform

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from modelyard.core import Platform
    from modelyard.data import add_version

    root, n = Path(sys.argv[1]), int(sys.argv[2])
    with Platform() as platform:
        ctx = platform.context()
        for i in range(n):
            tree = root / f"t{i}"
            tree.mkdir(parents=True)
            (tree / "data.txt").write_text(f"{root.name} {i}")
            print(add_version(platform, ctx, tree, "shared").version)
    """
)


def run_adders(tmp_path: Path, env: dict[str, str], processes: int = 4, each: int = 3) -> list[int]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"w{p}"), str(each)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    numbers: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        numbers += [int(x) for x in out.split()]
    return numbers


def check(platform: Platform, numbers: list[int], total: int) -> None:
    assert sorted(numbers) == list(range(1, total + 1))
    assert [v.version for v in list_versions(platform, platform.context(), "shared")] == list(
        range(1, total + 1)
    )


def test_concurrent_adds_on_sqlite(platform: Platform, tmp_path: Path) -> None:
    numbers = run_adders(tmp_path, dict(os.environ))
    check(platform, numbers, 12)


@pytest.mark.postgres
def test_concurrent_adds_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    home = tmp_path / "pg-home"
    platform = make_platform(home, database_url=postgres_url)
    try:
        env = {**os.environ, "YARD_HOME": str(home), "YARD_DATABASE_URL": postgres_url}
        numbers = run_adders(tmp_path, env)
        check(platform, numbers, 12)
    finally:
        platform.close()
