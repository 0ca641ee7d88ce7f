"""A forked child (a DataLoader worker) calling the module helpers, as README's examples log, is told that
the run is its parent's and how to log from there (docs/tracking.md), not "call start_run first"."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from modelyard.testing import Yard

CHILD = textwrap.dedent(
    """
    import os
    import modelyard
    from modelyard.errors import UsageError

    with modelyard.start_run(experiment="fork", capture=False) as run:
        modelyard.log_metric("loss", 1.0, step=0)
        pid = os.fork()
        if pid == 0:
            calls = (lambda: modelyard.log_metric("loss", 9.0, step=9), lambda: modelyard.log_param("a", 1))
            for call in calls:
                try:
                    call()
                    print("child: accepted", flush=True)
                except UsageError as exc:
                    print("child:", exc.message, flush=True)
            print("child active:", modelyard.tracking.active_run(), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        modelyard.log_metric("loss", 0.5, step=1)
    print("parent:", run.id, modelyard.Client().get_run(run.id).status, flush=True)
    """
)


def test_module_helpers_in_a_forked_child_name_the_parents_run(yard: Yard, tmp_path: Path) -> None:
    assert yard("init").code == 0
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    parent = next(line for line in lines if line.startswith("parent:")).split()
    run_id = parent[1]
    assert parent[2] == "FINISHED"
    refusals = [line for line in lines if line.startswith("child:")]
    assert len(refusals) == 2, lines
    for line in refusals:
        # It said "no active run: call modelyard.start_run(...) first": a top-level run of its own.
        assert f"run {run_id} belongs to the process that forked this one" in line, line
        assert f"Client().start_run(parent_id={run_id!r})" in line, line
    assert "child active: None" in lines
