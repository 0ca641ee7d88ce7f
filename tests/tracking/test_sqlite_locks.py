"""A SQLite store shared by several stores of one process and by other processes loses nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import modelyard
from modelyard.core import Platform
from modelyard.data import add_version
from modelyard.testing import make_platform
from modelyard.tracking import Client

_READ = "select count(*) from sqlite_master"  # a read: a connection that reads nothing never opens the WAL


def test_metrics_logged_after_a_dataset_get_inside_the_run_are_kept(
    platform: Platform, tmp_path: Path
) -> None:
    """`modelyard.data.get` inside a run opens a second store on yard.db. Its private pre-create used to open
    and close the file, which drops every POSIX lock this process held on it (SQLite's locks): the next
    process to close its connection took the store as unused, checkpointed and deleted the WAL, and the
    run's later metrics went into the deleted file or failed with 'disk I/O error'."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.csv").write_text("x\n1\n")
    add_version(platform, platform.context(), src, "ds")
    db = platform.settings.home / "yard.db"
    with Client(platform=platform) as client, client.start_run("exp") as run:
        run.log_metric("loss", 0.0, step=0)
        run.flush()
        modelyard.data.get("ds@1")
        # Any other process (a `yard runs ls` in a shell) opens, reads and closes the store.
        code = f"import sqlite3; c = sqlite3.connect({str(db)!r}); c.execute('{_READ}'); c.close()"
        subprocess.run([sys.executable, "-c", code], check=True)
        for step in range(1, 50):
            run.log_metric("loss", float(step), step=step)
        run.flush()
    reopened = make_platform(platform.settings.home)
    try:
        with Client(platform=reopened) as client:
            assert [p.step for p in client.metric_history(run.id)["loss"]] == list(range(50))
    finally:
        reopened.close()
