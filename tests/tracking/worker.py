"""A training process for the tracking tests, run as a real subprocess: ``python worker.py MODE ...``.

Settings come from the environment (YARD_HOME, YARD_DATABASE_URL, YARD_RUN_HEARTBEAT_S, ...)."""

from __future__ import annotations

import sys
import time

from modelyard.tracking import Client


def concurrent(run_id: str, worker: int, count: int) -> None:
    """Log ``count`` points one call at a time into a run other processes write too."""
    with Client() as client, client.start_run(run_id=run_id, capture=False) as run:
        for i in range(count):  # one key for all: every flush contends on the same latest-value row
            run.log_metric("loss", float(worker), step=i)
    print("done", flush=True)


def crash(count: int) -> None:
    """Flush ``count`` points, say so, then keep logging until killed."""
    client = Client()
    run = client.start_run("crash", capture=False)
    for i in range(count):
        run.log_metric("loss", 1.0 / (i + 1), step=i)
    run.flush()
    print(f"flushed {run.id} {count}", flush=True)
    i = count
    while True:
        run.log_metric("loss", 1.0 / (i + 1), step=i)
        i += 1
        time.sleep(0.001)


def term(count: int) -> None:
    """Buffer ``count`` points (no flush), say so, then wait for a signal inside the run."""
    client = Client()
    with client.start_run("term", capture=False) as run:
        for i in range(count):
            run.log_metric("loss", float(i), step=i)
        print(f"ready {run.id} {run.buffered}", flush=True)
        while True:
            time.sleep(0.05)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "concurrent":
        concurrent(args[0], int(args[1]), int(args[2]))
    elif mode == "crash":
        crash(int(args[0]))
    elif mode == "term":
        term(int(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")
