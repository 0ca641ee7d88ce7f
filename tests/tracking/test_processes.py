"""Real processes and real signals: many writers into one run, SIGKILL, SIGTERM, SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from modelyard.core import Platform
from modelyard.core._models import AuditRecord, RunLatestMetric, RunMetric
from modelyard.testing import reaping
from modelyard.tracking import Client

WORKER = Path(__file__).with_name("worker.py")


def _env(platform: Platform, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env["YARD_HOME"] = str(platform.settings.home)
    if platform.settings.database_url:
        env["YARD_DATABASE_URL"] = platform.settings.database_url
    env["YARD_SYSTEM_METRICS_S"] = "0"
    env.update(extra)
    return env


def _spawn(platform: Platform, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=_env(platform, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"worker exited early ({proc.returncode}):\n{err}")
    return line.split()


@pytest.mark.slow
def test_eight_processes_log_into_one_run_and_lose_nothing(any_platform: Platform) -> None:
    per_process, processes = 10_000, 8
    with Client(platform=any_platform) as client:
        run = client.start_run("concurrent", capture=False)
        run.end()
    procs = [_spawn(any_platform, "concurrent", run.id, str(w), str(per_process)) for w in range(processes)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == "done"
        assert "Error" not in err and "locked" not in err, err
    with any_platform.db.read() as s:
        total = s.scalar(select(func.count()).select_from(RunMetric).where(RunMetric.run_id == run.id))
        per_worker = {
            value: n
            for value, n in s.execute(
                select(RunMetric.value, func.count(func.distinct(RunMetric.step)))
                .where(RunMetric.run_id == run.id)
                .group_by(RunMetric.value)
            )
        }
        latest = s.execute(select(RunLatestMetric).where(RunLatestMetric.run_id == run.id)).scalar_one()
    assert total == per_process * processes
    assert per_worker == {float(w): per_process for w in range(processes)}
    assert latest.step == per_process - 1
    with Client(platform=any_platform) as client:
        assert client.get_run(run.id).status == "FINISHED"


@pytest.mark.slow
def test_sigkill_mid_run_is_reaped_failed_with_every_flushed_metric(platform: Platform) -> None:
    proc = _spawn(
        platform,
        "crash",
        "500",
        YARD_RUN_HEARTBEAT_S="0.2",
        YARD_RUN_HEARTBEAT_TIMEOUT_S="2",  # the run's own timeout: the reaper goes by it
        YARD_METRIC_FLUSH_S="0.2",
    )
    with reaping(proc):
        _, run_id, flushed = _first_line(proc)
        time.sleep(0.5)  # let it log (and flush) a little more
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    short = Platform(platform.settings.model_copy(update={"run_heartbeat_timeout_s": 2.0}))
    try:
        with Client(platform=short) as client:
            assert client.get_run(run_id).status == "RUNNING"  # its heartbeat is still fresh
            deadline = time.monotonic() + 30
            while client.get_run(run_id).status == "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.2)  # every read reaps
            info = client.get_run(run_id)
            assert info.status == "FAILED"
            assert info.reason is not None and "heartbeat" in info.reason
            steps = [p.step for p in client.metric_history(run_id)["loss"]]
        assert set(range(int(flushed))) <= set(steps)
        assert len(steps) == len(set(steps))  # nothing written twice
        with short.db.read() as s:
            reaped = s.scalars(
                select(AuditRecord).where(
                    AuditRecord.resource == f"run:{run_id}", AuditRecord.actor == "system:reaper"
                )
            ).all()
        assert len(reaped) == 1 and "FAILED" in reaped[0].detail
    finally:
        short.close()


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, None)])
def test_sigterm_and_sigint_flush_and_end_killed(platform: Platform, sig: int, code: int | None) -> None:
    # A long flush interval: nothing is durable before the signal unless the handler flushes it.
    proc = _spawn(platform, "term", "3000", YARD_METRIC_FLUSH_S="600")
    with reaping(proc):
        _, run_id, buffered = _first_line(proc)
        assert int(buffered) > 0
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    if code is not None:
        assert proc.returncode == code, err
    else:
        assert proc.returncode != 0 and "KeyboardInterrupt" in err
    with Client(platform=platform) as client:
        info = client.get_run(run_id)
        assert info.status == "KILLED"
        assert info.reason is not None and signal.Signals(sig).name in info.reason
        assert [p.step for p in client.metric_history(run_id)["loss"]] == list(range(3000))


@pytest.mark.slow
def test_an_ignored_signal_stays_ignored(platform: Platform) -> None:
    # A process that ignores SIGINT (nohup, a background job of a script) must keep ignoring it: the
    # client installs no handler there, so SIGINT neither ends the run nor stops training. SIGTERM still
    # ends it KILLED with every point.
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "term", "500"],
        env=_env(platform, YARD_METRIC_FLUSH_S="600", WORKER_KEEP_SIGINT="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    with reaping(proc):
        _, run_id, _ = _first_line(proc)
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        with Client(platform=platform) as client:
            assert client.get_run(run_id).status == "RUNNING"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    with Client(platform=platform) as client:
        info = client.get_run(run_id)
        assert info.status == "KILLED" and info.reason is not None and "SIGTERM" in info.reason
        assert len(client.metric_history(run_id)["loss"]) == 500


def test_a_run_left_open_is_finished_at_interpreter_exit(platform: Platform, tmp_path: Path) -> None:
    script = tmp_path / "open_run.py"
    script.write_text(
        "import modelyard\n"
        "run = modelyard.start_run('exit', capture=False)\n"
        "for i in range(100): modelyard.log_metric('x', i, step=i)\n"
        "print(run.id)\n"
    )
    env = _env(platform, YARD_METRIC_FLUSH_S="600")
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with Client(platform=platform) as client:
        run_id = r.stdout.strip()
        assert client.get_run(run_id).status == "FINISHED"
        assert len(client.metric_history(run_id)["x"]) == 100


@pytest.mark.slow
def test_sigterm_during_end_is_killed_with_every_metric(platform: Platform) -> None:
    # The signal lands while end() flushes: the handler must finish that end (KILLED), not skip the run
    # as already ended and exit with it RUNNING and its buffered points lost.
    proc = _spawn(platform, "term_in_end", "2000", YARD_METRIC_FLUSH_S="600")
    with reaping(proc):
        _, run_id = _first_line(proc)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "end returned" not in out
    with Client(platform=platform) as client:
        info = client.get_run(run_id)
        assert info.status == "KILLED"
        assert info.reason is not None and "SIGTERM" in info.reason
        assert [p.step for p in client.metric_history(run_id)["loss"]] == list(range(2000))


def test_an_end_that_did_not_commit_is_retried_at_exit(platform: Platform) -> None:
    proc = _spawn(platform, "end_fails_once", "50", YARD_METRIC_FLUSH_S="600")
    with reaping(proc):
        _, _, run_id = _first_line(proc)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    with Client(platform=platform) as client:
        info = client.get_run(run_id)
        assert (info.status, info.reason) == ("FAILED", "diverged")  # what end() asked for
        assert len(client.metric_history(run_id)["loss"]) == 50


@pytest.mark.parametrize(
    ("ending", "status", "reason"),
    [
        ("raise RuntimeError('training diverged')", "FAILED", "RuntimeError: training diverged"),
        ("raise KeyboardInterrupt", "KILLED", "KeyboardInterrupt"),
        ("raise SystemExit(0)", "FINISHED", "exited with the run open"),
        ("pass", "FINISHED", "exited with the run open"),
    ],
)
def test_a_run_left_open_gets_the_status_of_how_the_process_ended(
    platform: Platform, tmp_path: Path, ending: str, status: str, reason: str
) -> None:
    script = tmp_path / "open_run.py"
    script.write_text(
        "from modelyard.tracking import Client\n"
        "run = Client().start_run('exit', capture=False)\n"
        "run.log_metric('x', 1.0)\n"
        "print(run.id, flush=True)\n"
        f"{ending}\n"
    )
    env = _env(platform, YARD_METRIC_FLUSH_S="600")
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    with Client(platform=platform) as client:
        info = client.get_run(r.stdout.strip())
    assert info.status == status, r.stderr
    assert info.reason is not None and reason in info.reason
    assert info.metrics == {"x": 1.0}


def test_a_forked_child_leaves_the_parents_run_alone(any_platform: Platform) -> None:
    """A forked child's exit or SIGTERM ended the parent's live run (FINISHED, KILLED) while it trained on,
    and what the child logged was accepted and never written (helper-24)."""
    proc = _spawn(any_platform, "fork")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        "child: refused True",
        f"terminated child exit {-signal.SIGTERM}",  # killed by the signal, as without us
        "parent sees RUNNING",
        "ended FINISHED",
    ], err
    with Client(platform=any_platform) as client:
        [run] = client.search_runs("fork")
        history = client.metric_history(run.id)["loss"]
    assert [(p.step, p.value) for p in history] == [(0, 1.0), (1, 0.5)]


def test_a_programs_own_sigterm_handler_runs_first_and_the_run_ends_killed_after(
    any_platform: Platform,
) -> None:
    """The run was ended KILLED before the program's handler ran, so its checkpoint-then-stop path found
    it ended (helper-24). Now the handler runs first; the run ends KILLED when the program stops because of
    the signal, and a run started after the signal is not marked by it (helper-28)."""
    proc = _spawn(any_platform, "graceful")
    _, run_id = _first_line(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    [later_id] = [line.split()[1] for line in out.splitlines() if line.startswith("later ")]
    with Client(platform=any_platform) as client:
        run, later = client.get_run(run_id), client.get_run(later_id)
    assert (run.status, run.reason, run.metrics) == (
        "KILLED",
        "received SIGTERM, then SystemExit: 143",
        {"checkpointed": 1.0},
    )
    assert later.status == "FINISHED"


def test_a_programs_sigterm_handler_survives_two_clients_ending_out_of_order(any_platform: Platform) -> None:
    """The second client's handler wrapped the first's; the first, idle, dropped the program's handler it
    had saved, and the second put the first's back: SIGTERM then exited 143 and the program's handler was
    never called."""
    proc = _spawn(any_platform, "two_clients")
    with reaping(proc):
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[:2] == ["program handler", "program handler"], out
    _, one, two = lines[2].split()
    with Client(platform=any_platform) as client:
        assert [client.get_run(r).status for r in (one, two)] == ["FINISHED", "FINISHED"]


def test_a_run_left_open_by_a_finished_thread_is_ended_at_exit(platform: Platform) -> None:
    """The client and its run only referred to each other once the thread that started them was gone, so
    the garbage collector took them and the exit hook (which holds the client weakly) found nothing to
    end: the run stayed RUNNING and its buffered points were lost."""
    proc = _spawn(platform, "thread_run", YARD_METRIC_FLUSH_S="600")
    with reaping(proc):
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    run_id = out.split()[1]
    with Client(platform=platform) as client:
        info = client.get_run(run_id)
    assert (info.status, info.metrics) == ("FINISHED", {"loss": 0.5})
