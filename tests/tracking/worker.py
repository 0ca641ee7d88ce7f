"""A training process for the tracking tests, run as a real subprocess: ``python worker.py MODE ...``.

Settings come from the environment (YARD_HOME, YARD_DATABASE_URL, YARD_RUN_HEARTBEAT_S, ...)."""

from __future__ import annotations

import os
import signal
import sys
import time

from modelyard.errors import BackendError
from modelyard.tracking import Client, _store, _writer


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


def term_in_end(count: int) -> None:
    """Buffer ``count`` points, then end the run; SIGTERM arrives while end() is flushing."""
    client = Client()
    run = client.start_run("term", capture=False)
    for i in range(count):
        run.log_metric("loss", float(i), step=i)
    print(f"ready {run.id}", flush=True)
    real_stop = _writer.MetricWriter.stop
    sent = []

    def stop(self: _writer.MetricWriter, timeout: float) -> None:
        if not sent:  # once: the handler's own flush must not signal again
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        real_stop(self, timeout)

    _writer.MetricWriter.stop = stop  # type: ignore[method-assign]
    run.end()
    print("end returned", flush=True)  # not reached: the handler exits 128+15


def end_fails_once(count: int) -> None:
    """Ask for FAILED while the store refuses the final status, then exit with the run's end pending."""
    client = Client()
    run = client.start_run("endfail", capture=False)
    for i in range(count):
        run.log_metric("loss", float(i), step=i)
    real_end = _store.end_run

    def refuse(*args: object, **kwargs: object) -> None:
        raise BackendError("store unavailable (simulated outage)")

    _store.end_run = refuse  # type: ignore[assignment]
    try:
        run.end("FAILED", reason="diverged")
    except BackendError:
        print(f"end failed {run.id}", flush=True)
    _store.end_run = real_end  # the store is back; the exit must retry what end() asked for


def open_runs(count: int) -> None:
    """Open ``count`` runs (an even number) with a point buffered in each, say so, wait for a line on stdin
    (the test takes the store away meanwhile), then exit with the runs open; the last exit hook says how
    long the exit's hooks took."""
    import atexit

    started: list[float] = []
    atexit.register(lambda: started and print(f"exit hooks took {time.monotonic() - started[0]:.3f}"))
    runs = []
    for _ in range(count // 2):  # clients (an exit hook each), each with a run and a nested one
        client = Client()
        runs.append(client.start_run("exit", capture=False))
        runs.append(client.start_run("exit", nested=True, capture=False))
    for run in runs:
        run.log_metric("loss", 1.0)
    print("ready " + " ".join(run.id for run in runs), flush=True)
    sys.stdin.readline()
    started.append(time.monotonic())


def _sleep_forever() -> None:
    while True:
        time.sleep(0.05)


def fork() -> None:
    """Fork children inside a live run, as DataLoader workers and multiprocessing do: one logs and exits
    normally (atexit runs), one is terminated (SIGTERM); then report what the parent's run looks like."""
    import multiprocessing

    from modelyard.errors import UsageError

    client = Client()
    with client.start_run("fork", capture=False) as run:
        run.log_metric("loss", 1.0, step=0)
        run.flush()
        pid = os.fork()
        if pid == 0:  # the child leaves the `with` block and exits through the interpreter's exit
            try:
                run.log_metric("loss", 9.0, step=9)
                print("child: accepted", flush=True)
            except UsageError as exc:
                print(f"child: refused {'forked this one' in str(exc)}", flush=True)
            sys.exit(0)
        os.waitpid(pid, 0)
        child = multiprocessing.get_context("fork").Process(target=_sleep_forever)
        child.start()
        time.sleep(0.3)
        child.terminate()
        child.join()
        print(f"terminated child exit {child.exitcode}", flush=True)
        print(f"parent sees {client.get_run(run.id).status}", flush=True)
        run.log_metric("loss", 0.5, step=1)
    print(f"ended {client.get_run(run.id).status}", flush=True)


def graceful() -> None:
    """A program with its own SIGTERM handler (checkpoint, then stop), as preemptible jobs have."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    client = Client()
    with client.start_run("graceful", capture=False) as run:
        print(f"ready {run.id}", flush=True)
        while not stop:
            time.sleep(0.02)
        run.log_metric("checkpointed", 1.0)  # the run is still open while the program winds down
        with client.start_run(nested=True, capture=False) as later:  # started after the signal
            pass
        print(f"later {later.id}", flush=True)
        sys.exit(128 + signal.SIGTERM)  # the program stops because of the signal


def two_clients() -> None:
    """A program with its own SIGTERM handler and two clients whose runs end first-started first."""
    signal.signal(signal.SIGTERM, lambda *_: print("program handler", flush=True))
    first, second = Client(), Client()
    one = first.start_run("two", capture=False)
    two = second.start_run("two", capture=False)
    one.end()
    os.kill(os.getpid(), signal.SIGTERM)  # the second run is still open: the program's handler decides
    two.end()
    os.kill(os.getpid(), signal.SIGTERM)  # no run open: only the program's handler runs
    print(f"alive {one.id} {two.id}", flush=True)


def thread_run() -> None:
    """A thread starts a run with a client of its own and returns without ending it; nothing else in the
    program refers to that client."""
    import gc
    import threading

    ids: list[str] = []

    def work() -> None:
        run = Client().start_run("thread", capture=False)
        run.log_metric("loss", 0.5)
        ids.append(run.id)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    gc.collect()
    print(f"started {ids[0]}", flush=True)


if __name__ == "__main__":
    # A script started from a terminal gets Python's KeyboardInterrupt handler. One started by a
    # non-interactive shell's background job (`cmd &`, as CI runners and `nohup ... &` do) inherits
    # SIGINT ignored, which the client respects (see test_an_ignored_signal_stays_ignored), so these
    # workers would shrug SIGINT off: give them the terminal's handler unless the test asks otherwise.
    if os.environ.get("WORKER_KEEP_SIGINT") != "1":
        signal.signal(signal.SIGINT, signal.default_int_handler)
    mode, *args = sys.argv[1:]
    if mode == "concurrent":
        concurrent(args[0], int(args[1]), int(args[2]))
    elif mode == "crash":
        crash(int(args[0]))
    elif mode == "term":
        term(int(args[0]))
    elif mode == "term_in_end":
        term_in_end(int(args[0]))
    elif mode == "end_fails_once":
        end_fails_once(int(args[0]))
    elif mode == "open_runs":
        open_runs(int(args[0]))
    elif mode == "fork":
        fork()
    elif mode == "graceful":
        graceful()
    elif mode == "two_clients":
        two_clients()
    elif mode == "thread_run":
        thread_run()
    else:
        raise SystemExit(f"unknown mode {mode}")
