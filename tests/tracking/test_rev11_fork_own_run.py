"""A forked child that followed the advice (a run of its own) and ended it is no longer told that the
parent's run is what it logs into: with no run active, it is told to start one, as any process is."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from modelyard.testing import Yard

CHILD = textwrap.dedent(
    """
    import os
    import modelyard
    from modelyard.errors import UsageError

    with modelyard.start_run(experiment="fork", capture=False) as run:
        pid = os.fork()
        if pid == 0:
            with modelyard.start_run(experiment="fork", capture=False) as own:
                modelyard.log_metric("loss", 1.0, step=0)
            print("child own:", own.id, flush=True)
            try:
                modelyard.log_metric("loss", 9.0, step=9)
                print("child: accepted", flush=True)
            except UsageError as exc:
                print("child:", exc.message, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    print("parent:", run.id, flush=True)
    """
)


def test_a_child_whose_own_run_ended_is_told_to_start_one(yard: Yard) -> None:
    assert yard("init").code == 0
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    parent = next(line for line in lines if line.startswith("parent:")).split()[1]
    said = next(line for line in lines if line.startswith("child:"))
    # It said "run <parent> belongs to the process that forked this one": the child had left that run
    # behind and had a run of its own since.
    assert parent not in said, said
    assert "no active run" in said, said
