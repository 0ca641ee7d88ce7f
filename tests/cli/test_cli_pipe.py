"""`yard ... | head`: a reader that stops early ends the command quietly, with the exit code of SIGPIPE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.testing import Yard
from modelyard.tracking import Client


def popen_yard(*args: str, stderr: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "NO_COLOR": "1"},
    )


@pytest.fixture
def big_run(yard: Yard, home: Path) -> str:
    """A run whose `yard runs show` prints several tables, well over a pipe's 64 KiB buffer."""
    assert yard("init").code == 0
    with (
        Platform() as platform,
        Client(platform=platform) as client,
        client.start_run("pipe", capture=False) as run,
    ):
        for block in range(20):
            run.log_params({f"p{block}_{i}": "v" * 40 for i in range(100)})
        run.log_metrics({f"m{i}": 1.0 for i in range(50)}, step=0)
    r = yard("runs", "show", run.id)
    assert r.code == 0 and len(r.out.encode()) > 65536
    return run.id


def test_a_reader_that_stops_early_ends_the_command_quietly(big_run: str) -> None:
    proc = popen_yard("runs", "show", big_run)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10)  # like `head -c 10`: read a little, then close the pipe
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE, what git and the shell report
    assert err == b""


def test_an_error_written_to_a_closed_pipe_keeps_its_exit_code(yard: Yard) -> None:
    assert yard("init").code == 0
    # `yard ... 2>&1 | head` with the reader gone: the usage error cannot be shown, but its code stays 2.
    proc = popen_yard("runs", "ls", "--max", "0", stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=120) == 2
