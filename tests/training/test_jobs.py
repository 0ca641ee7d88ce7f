"""The job queue with real worker processes, real signals and a real PostgreSQL queue.

Why a trivial executor: `yard train` of even the tiny recipe takes seconds of torch start-up and training
per job, so twenty of them, or a job that must still be running when its worker is SIGKILLed, would make
these tests slow and timing-dependent. The queue machinery (claim, heartbeat, reaper, retry, logs, cancel,
process groups, PR_SET_PDEATHSIG) is the same whatever the job's argv is, so these tests give the real
Worker a real but trivial executor: a small Python child (CHILD below) that records that it ran, prints,
sleeps and exits as asked. The default executor (`python -m modelyard.cli train ...`) is covered by
test_train_job_end_to_end, skipped while `yard train` does not exist.

Run as a script (``python test_jobs.py worker NAME MARKS [--cpus N] [--drain]``) this file is the worker
process of the multi-process tests; its settings come from the environment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from modelyard.core import Context, Platform, create_project
from modelyard.core._models import AuditRecord, Job, JobLog
from modelyard.core._platform import utcnow
from modelyard.errors import BackendError, NotFoundError, PermissionDeniedError, UsageError, ValidationError
from modelyard.testing import JOB_RECIPE, FakeCluster, actor, fake_kubernetes, make_platform, reaping
from modelyard.training import _jobs

HERE = Path(__file__)
RECIPE = JOB_RECIPE

# The job's process: records (job, attempt, worker, pid, resume run) in MARKS, prints, sleeps, exits.
CHILD = r"""
import os, signal, sys, time
job, attempt, recipe, marks, worker, resume, *opts = sys.argv[1:]
def opt(name, default):
    return opts[opts.index(name) + 1] if name in opts else default
if "--ignore-term" in opts:
    signal.signal(signal.SIGTERM, lambda *a: print("got SIGTERM, ignoring", flush=True))
def done(*a):  # --term-exit CODE: a job that finishes its work on SIGTERM and exits with CODE
    print("got SIGTERM, done", flush=True)
    os._exit(int(opt("--term-exit", "0")))
if "--term-exit" in opts:
    signal.signal(signal.SIGTERM, done)
mode = oct(os.stat(recipe).st_mode & 0o777)
with open(marks, "a") as f:
    f.write(f"{job} {attempt} {worker} {os.getpid()} {resume}\n")
print(f"job {job} attempt {attempt} env {os.environ['YARD_JOB_ID']} recipe {mode} "
      f"gpus [{os.environ['CUDA_VISIBLE_DEVICES']}] threads {os.environ['OMP_NUM_THREADS']}", flush=True)
for i in range(int(opt("--lines", "0"))):
    print(f"line {i}", flush=True)
    time.sleep(float(opt("--every", "0.05")))
print("to stderr", file=sys.stderr, flush=True)
held = bytearray(int(opt("--alloc-mib", "0")) << 20)
held[::4096] = b"\x01" * len(range(0, len(held), 4096))  # touch every page: resident, not just reserved
time.sleep(float(opt("--sleep", "0")))
sys.exit(int(opt("--exit", "0")))
"""


def trivial_executor(marks: Path) -> _jobs.Executor:
    def argv(job: _jobs.JobInfo, recipe_file: Path) -> list[str]:
        real = _jobs.cli_argv(job, recipe_file)  # what the default executor would run: shows --resume
        resume = real[real.index("--resume") + 1] if "--resume" in real else "-"
        ids = [str(job.id), str(job.attempts), str(recipe_file), str(marks), job.worker or "?", resume]
        return [sys.executable, "-c", CHILD, *ids, *job.args]

    return argv


def read_marks(marks: Path) -> list[tuple[int, int, str, int, str]]:
    if not marks.exists():
        return []
    out = []
    for line in marks.read_text().splitlines():
        job, attempt, worker, pid, resume = line.split()
        out.append((int(job), int(attempt), worker, int(pid), resume))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie no-one reaped is dead


def wait_for(check: Callable[[], object], timeout: float = 30, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def jobs_by_id(platform: Platform) -> dict[int, Job]:
    with platform.db.read() as s:
        return {j.id: j for j in s.scalars(select(Job))}


def fast(platform: Platform, **extra: object) -> Platform:
    """The same store with short heartbeat, timeout and grace settings."""
    values = {
        "job_heartbeat_s": 0.2,
        "job_heartbeat_timeout_s": 1.5,
        "job_poll_s": 0.1,
        "job_kill_grace_s": 0.5,
        **extra,
    }
    return Platform(platform.settings.model_copy(update=values))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_platform(request: pytest.FixtureRequest, home: Path) -> Iterator[Platform]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    p = make_platform(home, database_url=url)
    yield p
    p.close()


def _dataset(platform: Platform, ctx: Context, tmp: Path) -> None:
    from modelyard.data import add_version
    from modelyard.training import write_dataset

    write_dataset(tmp / "normalise", 40, seed=1)
    add_version(platform, ctx, tmp / "normalise", "normalise")


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture
def queue(any_platform: Platform, tmp_path: Path, recipe: Path) -> tuple[Platform, Context, Path]:
    ctx = any_platform.context()
    _dataset(any_platform, ctx, tmp_path)
    return any_platform, ctx, recipe


@pytest.fixture
def local_queue(platform: Platform, tmp_path: Path, recipe: Path) -> tuple[Platform, Context, Path]:
    ctx = platform.context()
    _dataset(platform, ctx, tmp_path)
    return platform, ctx, recipe


class ThreadWorker:
    """A real Worker running in a thread of the test process (its jobs are real subprocesses)."""

    def __init__(self, platform: Platform, ctx: Context, marks: Path, **options: object) -> None:
        options.setdefault("exit_when_idle", True)
        self.worker = _jobs.Worker(platform, ctx, executor=trivial_executor(marks), **options)  # type: ignore[arg-type]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> _jobs.Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        """A draining worker (exit_when_idle) is waited for; any other is stopped."""
        if not self.worker.exit_when_idle or exc[0] is not None:
            self.worker.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "worker thread did not stop"
        if self.error is not None:
            raise self.error


# -- two worker processes, one queue ------------------------------------------------------------------------
def _env(platform: Platform, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env["YARD_HOME"] = str(platform.settings.home)
    if platform.settings.database_url:
        env["YARD_DATABASE_URL"] = platform.settings.database_url
    env.update(YARD_JOB_HEARTBEAT_S="0.2", YARD_JOB_HEARTBEAT_TIMEOUT_S="1.5", YARD_JOB_POLL_S="0.1", **extra)
    return env


def spawn_worker(platform: Platform, name: str, marks: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), "worker", name, str(marks), *args],
        env=_env(platform),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_worker_processes_run_20_jobs_exactly_once_in_priority_order(
    queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    platform, ctx, recipe = queue
    priorities = ["low", "high", "normal", "urgent", "normal"] * 4
    submitted = [
        _jobs.submit_job(platform, ctx, recipe, priority=p, args=["--sleep", "0.15"]).id for p in priorities
    ]
    prio = dict(zip(submitted, (_jobs.PRIORITIES[p] for p in priorities), strict=True))
    marks, go = tmp_path / "marks", tmp_path / "go"
    workers = [
        spawn_worker(platform, f"w{i}", marks, "--cpus", "1", "--drain", "--go", str(go)) for i in (1, 2)
    ]
    try:
        for w in workers:  # both are up before either claims, so both get a share
            assert w.stdout is not None and w.stdout.readline().strip() == "ready", (
                w.stderr and w.stderr.read()
            )
        go.touch()
        for w in workers:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    jobs = jobs_by_id(platform)
    assert {j.status for j in jobs.values()} == {"SUCCEEDED"}
    assert all(j.attempts == 1 and j.exit_code == 0 for j in jobs.values())
    ran = Counter(m[0] for m in read_marks(marks))
    assert ran == dict.fromkeys(submitted, 1)  # each job ran exactly once
    by_worker = {
        name: sorted((j for j in jobs.values() if j.worker == name), key=lambda j: j.started_at)
        for name in ("w1", "w2")
    }
    assert all(by_worker.values()), "both workers ran jobs"
    for claimed in by_worker.values():
        # One worker's claims follow the queue exactly: priority first, then submission order.
        keys = [(-prio[j.id], j.id) for j in claimed]
        assert keys == sorted(keys)
    # Across workers: when a job was claimed, every job of higher priority had been claimed already, except
    # at most one the other worker was claiming in that instant (SKIP LOCKED passes over it).
    order = sorted(jobs.values(), key=lambda j: j.started_at)
    for i, job in enumerate(order):
        later_higher = [j for j in order[i + 1 :] if prio[j.id] > prio[job.id]]
        assert len(later_higher) <= 1, (job.id, [j.id for j in later_higher])
    with platform.db.read() as s:
        logged = s.scalar(select(func.count(func.distinct(JobLog.job_id))))
        claims = s.scalar(
            select(func.count()).where(
                AuditRecord.action == "worker.run", AuditRecord.detail.contains('"claim"')
            )
        )
    assert logged == 20 and claims == 20


def sigkill_mid_job(
    proc: subprocess.Popen[str],
    marks: Path,
    attempt: int,
    while_running: Callable[[tuple[int, int, str, int, str]], None] = lambda mark: None,
) -> tuple[int, int, str, int, str]:
    """Wait until the worker ``proc`` runs ``attempt`` of a job (its mark), call ``while_running`` with the
    mark, then SIGKILL the worker. PR_SET_PDEATHSIG: the job's process dies with it, so no orphan runs
    beside the retry (waited for). Returns the mark."""
    with reaping(proc):
        found = wait_for(lambda: [m for m in read_marks(marks) if m[1] == attempt], what=f"attempt {attempt}")
        mark = found[0]  # type: ignore[index]
        while_running(mark)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    wait_for(lambda: not alive(mark[3]), timeout=10, what="the orphaned job process to die")
    return mark


@pytest.mark.slow
def test_sigkilled_worker_job_is_retried_with_resume_then_failed_after_max_retries(
    queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    from modelyard.tracking._store import create_run

    platform, ctx, recipe = queue
    job = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "120"], max_retries=1)
    marks = tmp_path / "marks"

    def logged_attempts() -> set[int]:
        with platform.db.read() as s:
            return set(s.scalars(select(JobLog.attempt).where(JobLog.job_id == job.id)))

    def kill_worker_mid_job(name: str, attempt: int) -> tuple[int, str]:
        def while_running(mark: tuple[int, int, str, int, str]) -> None:
            _, _, worker, child, _ = mark
            assert worker == name and alive(child)
            if attempt == 1:  # the job's process reports its run, as `yard train` does
                run_id = create_run(platform, ctx, "jobs-test")
                _jobs.attach_run(platform, ctx, job.id, run_id)
            wait_for(lambda: attempt in logged_attempts(), what=f"output of attempt {attempt}")

        _, _, _, child, resume = sigkill_mid_job(
            spawn_worker(platform, name, marks), marks, attempt, while_running
        )
        return child, resume

    _, resume1 = kill_worker_mid_job("wa", 1)
    assert resume1 == "-"
    assert jobs_by_id(platform)[job.id].status == "RUNNING"  # its heartbeat is not stale yet
    # A new worker reaps the stale job (retry 1 of 1) and runs it again, resuming the attached run.
    _, resume2 = kill_worker_mid_job("wb", 2)
    attached = jobs_by_id(platform)[job.id].run_id
    assert attached is not None and resume2 == attached
    short = fast(platform)
    try:
        wait_for(lambda: _jobs.reap_stale_jobs(short, ctx), what="the reaper")
    finally:
        short.close()
    final = jobs_by_id(platform)[job.id]
    assert (final.status, final.attempts, final.retries) == ("FAILED", 2, 2)
    assert final.reason is not None and "gave up after 2 retries" in final.reason
    with platform.db.read() as s:
        reaped = s.scalars(
            select(AuditRecord.detail).where(
                AuditRecord.actor == "system:reaper", AuditRecord.resource == f"job:{job.id}"
            )
        ).all()
    assert len(reaped) == 2 and '"QUEUED"' in reaped[0] and '"FAILED"' in reaped[1]
    assert logged_attempts() == {1, 2}  # the output of both attempts is kept


def _worker_main(argv: list[str]) -> None:
    name, marks = argv[0], Path(argv[1])
    cpus = float(argv[argv.index("--cpus") + 1]) if "--cpus" in argv else 1.0
    platform = Platform()
    ctx = platform.context()
    if "--job" in argv:  # a Kubernetes job's pod: the job's own resources
        worker = _jobs.Worker(
            platform, ctx, name=name, executor=trivial_executor(marks), job=argv[argv.index("--job") + 1]
        )
    else:
        worker = _jobs.Worker(
            platform,
            ctx,
            cpus=cpus,
            gpus=0,
            memory="1G",
            name=name,
            executor=trivial_executor(marks),
            exit_when_idle="--drain" in argv,
        )
    print("ready", flush=True)
    if "--go" in argv:
        go = Path(argv[argv.index("--go") + 1])
        while not go.exists():
            time.sleep(0.01)
    worker.run()
    platform.close()


@pytest.mark.parametrize(
    ("aging_s", "limit", "expected"),
    [
        (0.0, "high", ["urgent", "high", "normal", "low"]),  # off (the default): strict priority
        (3600.0, "high", ["urgent", "low", "high", "normal"]),
        (3600.0, "urgent", ["low", "urgent", "high", "normal"]),
    ],
)
def test_aging_lets_a_long_waiting_job_overtake_newer_higher_priority_ones(
    queue: tuple[Platform, Context, Path], tmp_path: Path, aging_s: float, limit: str, expected: list[str]
) -> None:
    """One level (low -> normal -> high -> urgent) per job_aging_s waited, up to job_aging_limit: a low job
    queued 3 hours ago would rank 10 + 30 = 40. Under the default limit (high) it ranks 30, with the high
    job queued now, and goes first of the two as the older; the urgent one stays above both. With the
    limit at urgent it ties the urgent job and, older, goes before it. A normal job queued 30 minutes ago
    ranks 25."""
    platform, ctx, recipe = queue
    jobs = {
        p: _jobs.submit_job(platform, ctx, recipe, priority=p) for p in ("low", "normal", "high", "urgent")
    }
    now = utcnow()
    with platform.db.write() as s:
        for name, waited in (("low", timedelta(hours=3)), ("normal", timedelta(minutes=30))):
            s.execute(update(Job).where(Job.id == jobs[name].id).values(submitted_at=now - waited))
    settings = {"job_aging_s": aging_s, "job_aging_limit": limit}
    with ThreadWorker(fast(platform, **settings), ctx, tmp_path / "marks", cpus=1) as w:
        pass
    rows = jobs_by_id(platform)
    started = sorted(jobs, key=lambda name: rows[jobs[name].id].started_at)
    assert started == expected
    assert w.claimed == 4


def test_the_aging_limit_is_a_priority_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.config import load_settings
    from modelyard.errors import ConfigError

    monkeypatch.setenv("YARD_JOB_AGING_LIMIT", "urgent")
    assert load_settings().job_aging_limit == "urgent"
    monkeypatch.setenv("YARD_JOB_AGING_LIMIT", "sky-high")
    with pytest.raises(ConfigError, match="job_aging_limit"):
        load_settings()


@pytest.mark.parametrize(
    "name", ["JOB_HEARTBEAT_S", "JOB_HEARTBEAT_TIMEOUT_S", "JOB_POLL_S", "JOB_KILL_GRACE_S"]
)
@pytest.mark.parametrize("value", ["inf", "1e300", "2592001"])
def test_job_durations_past_30_days_are_refused_as_settings(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """inf or 1e300 seconds passed the settings and then broke every `yard jobs ls` and worker with an
    unexpected OverflowError (the store's clock plus the timeout; Event.wait; the pod's grace period)."""
    from modelyard.config import load_settings
    from modelyard.errors import ConfigError

    monkeypatch.setenv(f"YARD_{name}", value)
    with pytest.raises(ConfigError, match=f"YARD_{name}"):
        load_settings()


def test_the_longest_job_durations_work(local_queue: tuple[Platform, Context, Path]) -> None:
    platform, ctx, recipe = local_queue
    day30 = 30 * 86400.0
    slow = Platform(
        platform.settings.model_copy(
            update={"job_heartbeat_timeout_s": day30, "job_kill_grace_s": day30, "job_poll_s": day30}
        )
    )
    job = _jobs.submit_job(slow, ctx, recipe)
    assert [j.id for j in _jobs.list_jobs(slow, ctx)] == [job.id]  # the reaper's cutoff is computable
    _jobs.Worker(slow, ctx, cpus=1, max_jobs=1, executor=lambda j, r: [sys.executable, "-c", "pass"]).run()
    assert _jobs.get_job(slow, ctx, job.id).status == "SUCCEEDED"
    slow.close()


# -- resources ----------------------------------------------------------------------------------------------
def test_jobs_that_do_not_fit_the_worker_are_not_claimed(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    platform, ctx, recipe = local_queue
    gpu = _jobs.submit_job(platform, ctx, recipe, gpus=1, priority="urgent")
    big = _jobs.submit_job(platform, ctx, recipe, cpus=4, priority="urgent")
    fat = _jobs.submit_job(platform, ctx, recipe, memory="2G", priority="urgent")
    small = _jobs.submit_job(platform, ctx, recipe, cpus=2, memory="1G")
    said: list[str] = []
    with ThreadWorker(
        fast(platform), ctx, tmp_path / "marks", cpus=2, gpus=0, memory="1G", log=said.append
    ) as w:
        pass
    jobs = jobs_by_id(platform)
    assert w.claimed == 1 and jobs[small.id].status == "SUCCEEDED"
    for j in (gpu, big, fat):
        assert (jobs[j.id].status, jobs[j.id].attempts) == ("QUEUED", 0)
        # and the worker says why it leaves each one, once (they used to wait without a word)
        [line] = [m for m in said if f"job {j.id} asks for" in m]
        assert "this worker has 2, 0 and 1G, so it leaves the job to a larger worker" in line


def test_a_job_queued_before_duplicate_keys_were_refused_still_runs(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    from sqlalchemy import update

    from modelyard.core._models import Job
    from modelyard.training._recipe import parse_yaml

    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe)
    old = recipe.read_text() + "experiment: first\nexperiment: second\n"  # accepted when it was queued
    with platform.db.write() as s:
        s.execute(update(Job).where(Job.id == job.id).values(recipe=old))
    seen: list[str] = []

    def capture(info: _jobs.JobInfo, recipe_file: Path) -> list[str]:
        seen.append(recipe_file.read_text(encoding="utf-8"))
        return [sys.executable, "-c", "pass"]

    _jobs.Worker(platform, ctx, executor=capture, exit_when_idle=True, cpus=1).run()
    [text] = seen
    assert parse_yaml(text, source="job")["experiment"] == "second"  # read as it was then, strictly readable


def test_a_job_waits_for_free_resources_and_is_not_overtaken(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    """Two 1-CPU jobs share a 2-CPU worker; a 2-CPU high-priority job then waits for both, and a low one
    that would fit meanwhile does not overtake it (no backfill)."""
    platform, ctx, recipe = local_queue
    a = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "0.8"])
    b = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "0.8"])
    marks = tmp_path / "marks"
    with ThreadWorker(fast(platform), ctx, marks, cpus=2, memory="1G", exit_when_idle=False) as w:
        wait_for(lambda: len(read_marks(marks)) == 2, what="two jobs at once")
        high = _jobs.submit_job(platform, ctx, recipe, cpus=2, priority="high", args=["--sleep", "0.2"])
        low = _jobs.submit_job(platform, ctx, recipe, priority="low")
        wait_for(lambda: jobs_by_id(platform)[low.id].status == "SUCCEEDED", what="the low job")
    jobs = jobs_by_id(platform)
    assert jobs[b.id].started_at < jobs[a.id].finished_at  # ran side by side
    assert jobs[high.id].started_at >= max(jobs[a.id].finished_at, jobs[b.id].finished_at)
    assert jobs[low.id].started_at >= jobs[high.id].finished_at
    assert w.claimed == 4


def test_gpus_are_assigned_through_cuda_visible_devices(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, ctx, recipe = local_queue
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    one = _jobs.submit_job(platform, ctx, recipe, gpus=1)
    none = _jobs.submit_job(platform, ctx, recipe)
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", cpus=1) as w:
        assert w.gpu_ids == ["3", "5"]  # detected from the environment
    logs = {j: "".join(c.data for c in _jobs.iter_logs(platform, ctx, j)) for j in (one.id, none.id)}
    assert "gpus [3]" in logs[one.id] and "gpus []" in logs[none.id]
    assert f"env {one.id} recipe 0o600" in logs[one.id]  # YARD_JOB_ID; the recipe file is private
    # More GPUs than the machine shows would repeat an id ("3", "5", "2" before: two jobs on GPU 2).
    with pytest.raises(ValidationError, match=r"worker gpus 3: this machine shows 2 GPU\(s\) \(3, 5"):
        _jobs.Worker(platform, ctx, gpus=3)
    assert _jobs.Worker(platform, ctx, gpus=1).gpu_ids == ["3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _jobs.Worker(platform, ctx, gpus=2).gpu_ids == ["0", "1"]  # none detected: ids 0..n-1
    # A GPU listed twice is one GPU: offered twice, two 1-GPU jobs were placed on it (or one, given none
    # left to hand out, ran with CUDA_VISIBLE_DEVICES empty, on the CPU).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 3,5,3")
    assert _jobs.Worker(platform, ctx).gpu_ids == ["3", "5"]


def test_a_job_gets_as_many_threads_as_cpus_it_asked_for(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, ctx, recipe = local_queue
    monkeypatch.setenv("OMP_NUM_THREADS", "64")  # the worker's own setting does not leak into jobs
    one = _jobs.submit_job(platform, ctx, recipe, cpus=1)
    two = _jobs.submit_job(platform, ctx, recipe, cpus=2.5)
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", cpus=4):
        pass
    logs = {j: "".join(c.data for c in _jobs.iter_logs(platform, ctx, j)) for j in (one.id, two.id)}
    assert "threads 1" in logs[one.id] and "threads 2" in logs[two.id]


# -- cancel, stop, failures ---------------------------------------------------------------------------------
def test_cancel_a_queued_job(local_queue: tuple[Platform, Context, Path], tmp_path: Path) -> None:
    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe)
    info = _jobs.cancel_job(platform, ctx, job.id)
    assert info.status == "CANCELLED" and "while QUEUED" in (info.reason or "")
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", cpus=1) as w:
        pass
    assert w.claimed == 0 and not read_marks(tmp_path / "marks")
    with pytest.raises(UsageError, match="already CANCELLED"):
        _jobs.cancel_job(platform, ctx, job.id)


def test_cancel_a_running_job_terminates_it_and_escalates_to_sigkill(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "120", "--ignore-term"])
    marks = tmp_path / "marks"
    with ThreadWorker(fast(platform), ctx, marks, cpus=1) as w:
        child = wait_for(lambda: read_marks(marks), what="the job to start")[0][3]  # type: ignore[index]
        _jobs.cancel_job(platform, ctx, job.id)
        wait_for(lambda: not alive(child), timeout=15, what="the cancelled job to be killed")
    final = jobs_by_id(platform)[job.id]
    assert final.status == "CANCELLED" and final.exit_code is None  # the worker did not overwrite it
    assert not w.finished
    logs = "".join(c.data for c in _jobs.iter_logs(platform, ctx, job.id))
    assert "got SIGTERM, ignoring" in logs  # SIGTERM first, SIGKILL after the grace period


def test_a_job_over_its_memory_request_is_killed_and_fails_with_the_numbers(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    platform, ctx, recipe = local_queue

    def submit(alloc_mib: int, sleep: int, memory: str | None) -> _jobs.JobInfo:
        args = ["--alloc-mib", str(alloc_mib), "--sleep", str(sleep)]
        return _jobs.submit_job(platform, ctx, recipe, memory=memory, args=args)

    greedy = submit(300, 120, "100M")
    modest = submit(20, 1, "200M")
    free = submit(300, 1, None)  # no request, no limit
    marks = tmp_path / "marks"
    started = time.monotonic()
    with ThreadWorker(fast(platform), ctx, marks, cpus=1) as w:
        pass
    assert time.monotonic() - started < 60  # killed, not left to sleep its 120 s
    jobs = jobs_by_id(platform)
    assert (jobs[greedy.id].status, jobs[greedy.id].exit_code) == ("FAILED", -signal.SIGKILL)
    reason = jobs[greedy.id].reason or ""
    assert "memory limit exceeded" in reason and "100M requested" in reason, reason
    used = float(reason.split("exceeded: ")[1].split(" MiB in use")[0])
    assert 100 < used < 400  # the job's own pages, measured: over the request, not the machine's total
    assert jobs[modest.id].status == "SUCCEEDED" and jobs[free.id].status == "SUCCEEDED"
    assert (greedy.id, "FAILED") in w.finished
    pids = {job: pid for job, _, _, pid, _ in read_marks(marks)}
    assert not alive(pids[greedy.id])
    logs = "".join(c.data for c in _jobs.iter_logs(platform, ctx, greedy.id))
    assert "[yard] memory limit exceeded" in logs


def test_a_stopping_worker_hands_its_job_back(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "120"])
    marks = tmp_path / "marks"
    with ThreadWorker(fast(platform), ctx, marks, cpus=1, exit_when_idle=False):
        child = wait_for(lambda: read_marks(marks), what="the job to start")[0][3]  # type: ignore[index]
    assert not alive(child)
    final = jobs_by_id(platform)[job.id]
    assert (final.status, final.attempts, final.retries, final.worker) == ("QUEUED", 1, 0, None)


def test_a_job_that_exits_0_while_its_worker_stops_succeeded(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    """Graceful shutdown: the job's process gets SIGTERM and exits 0 (its work was done, say a last
    checkpoint saved): its exit status decides, so it is SUCCEEDED, not handed back to run again. One that
    exits non-zero on SIGTERM is handed back, as before."""
    platform, ctx, recipe = local_queue
    done = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "120", "--term-exit", "0"])
    marks = tmp_path / "marks"
    with ThreadWorker(fast(platform), ctx, marks, cpus=1, exit_when_idle=False) as w:
        wait_for(lambda: read_marks(marks), what="the job to start")
    final = jobs_by_id(platform)[done.id]
    assert (final.status, final.exit_code, final.attempts, final.retries) == ("SUCCEEDED", 0, 1, 0)
    assert (done.id, "SUCCEEDED") in w.finished and w.exit_code == 0
    stopped = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "120", "--term-exit", "143"])
    with ThreadWorker(fast(platform), ctx, marks, cpus=1, exit_when_idle=False):
        wait_for(lambda: [m for m in read_marks(marks) if m[0] == stopped.id], what="the job to start")
    final = jobs_by_id(platform)[stopped.id]
    assert (final.status, final.worker, final.retries) == ("QUEUED", None, 0)


def test_a_pod_whose_job_exits_0_on_sigterm_records_success(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path, cluster: FakeCluster
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe, args=["--sleep", "120", "--term-exit", "0"])
    marks = tmp_path / "marks"
    with ThreadWorker(fast(platform), ctx, marks, job=job.id) as w:
        wait_for(lambda: read_marks(marks), what="the job to start")
        w.stop()  # the pod is evicted just as the job ends its work
    row = jobs_by_id(platform)[job.id]
    assert (row.status, row.exit_code, w.exit_code) == ("SUCCEEDED", 0, 0)  # exit 0: the cluster is done


def test_heartbeats_keep_a_long_job_from_being_reaped(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    """A job running well past the heartbeat timeout is not re-queued while its worker lives."""
    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "3"])
    short = fast(platform)
    with ThreadWorker(short, ctx, tmp_path / "marks", cpus=1):
        while jobs_by_id(platform)[job.id].status in ("QUEUED", "RUNNING"):
            assert _jobs.reap_stale_jobs(short, ctx) == []
            time.sleep(0.1)
    final = jobs_by_id(platform)[job.id]
    assert (final.status, final.attempts, final.retries) == ("SUCCEEDED", 1, 0)


def test_a_job_is_reaped_by_its_own_workers_timeout_not_the_readers(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    """A worker that heartbeats every 1 s with a 30 s timeout, and a `yard jobs ls` on a machine set to a
    0.5 s timeout: the reader must not re-queue the live job (it did, and then ran it twice)."""
    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "3"])
    worker = fast(platform, job_heartbeat_s=1.0, job_heartbeat_timeout_s=30)
    reader = fast(platform, job_heartbeat_timeout_s=0.5)
    with ThreadWorker(worker, ctx, tmp_path / "marks", cpus=1):
        while jobs_by_id(platform)[job.id].status in ("QUEUED", "RUNNING"):
            assert _jobs.reap_stale_jobs(reader, ctx) == []
            time.sleep(0.1)
    final = jobs_by_id(platform)[job.id]
    assert (final.status, final.attempts, final.retries) == ("SUCCEEDED", 1, 0)
    # A worker that dies is reaped by its own (short) timeout by a reader whose own timeout is long.
    dead = _jobs.submit_job(platform, ctx, recipe, args=["--sleep", "120"])
    marks = tmp_path / "marks2"
    sigkill_mid_job(spawn_worker(platform, "doomed", marks), marks, 1)  # timeout 1.5 s
    patient = fast(platform, job_heartbeat_timeout_s=3600)
    wait_for(lambda: _jobs.reap_stale_jobs(patient, ctx), what="the reaper")
    assert jobs_by_id(platform)[dead.id].status == "QUEUED"


def test_a_worker_whose_heartbeat_is_not_well_within_the_timeout_is_refused(
    local_queue: tuple[Platform, Context, Path],
) -> None:
    """Heartbeats every 2 s against a 1.5 s timeout: the worker's own reaper re-queued its live job on every
    attempt until it FAILED. Such settings are refused before anything is claimed."""
    platform, ctx, _ = local_queue
    for beat, timeout in ((2.0, 1.5), (1.0, 2.5)):
        with pytest.raises(ValidationError, match=r"YARD_JOB_HEARTBEAT_S .* YARD_JOB_HEARTBEAT_TIMEOUT_S"):
            _jobs.Worker(fast(platform, job_heartbeat_s=beat, job_heartbeat_timeout_s=timeout), ctx)
    assert _jobs.Worker(fast(platform, job_heartbeat_s=0.5, job_heartbeat_timeout_s=1.5), ctx).cpus > 0


def test_failing_job_is_failed_with_its_exit_code_and_logs(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe, args=["--exit", "3"])
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", cpus=1):
        pass
    final = jobs_by_id(platform)[job.id]
    assert (final.status, final.exit_code, final.reason, final.retries) == ("FAILED", 3, "exit code 3", 0)
    logs = "".join(c.data for c in _jobs.iter_logs(platform, ctx, job.id))
    assert "to stderr" in logs  # stderr is captured with stdout


def test_follow_logs_reads_to_the_end(local_queue: tuple[Platform, Context, Path], tmp_path: Path) -> None:
    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe, args=["--lines", "30", "--every", "0.03"])
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", cpus=1):
        text = "".join(c.data for c in _jobs.iter_logs(platform, ctx, job.id, follow=True, poll_s=0.05))
    lines = [x for x in text.splitlines() if x.startswith("line ")]
    assert lines == [f"line {i}" for i in range(30)]
    assert text.rstrip().endswith("to stderr")


# -- authorisation, audit, bad input ------------------------------------------------------------------------
def _count(platform: Platform) -> int:
    with platform.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory": "8X"}, "not a size"),
        ({"memory": "-1G"}, "not a size"),
        ({"memory": "2P"}, "out of range"),
        ({"memory": "9" * 400}, "out of range"),  # a float overflows to inf
        ({"cpus": 10**400}, "out of range"),  # too large for a float
        ({"cpus": -1}, "out of range"),
        ({"cpus": 0}, "out of range"),
        ({"cpus": 0.0001}, "millicore"),
        ({"gpus": -1}, "out of range"),
        ({"gpus": 1.5}, "whole number"),
        ({"priority": "highest"}, "unknown priority 'highest'; expected one of: low, normal, high, urgent"),
        ({"command": "rm"}, "unknown job command 'rm'"),
        ({"max_retries": -1}, "max retries"),
        ({"args": ["--resume", "abc"]}, "--resume is added by the worker"),
        ({"args": ["a\x00b"]}, "NUL"),
        ({"args": "--trials 4"}, "a list of strings, not one string"),  # not split into characters
    ],
)
def test_bad_submissions_are_refused_and_change_nothing(
    local_queue: tuple[Platform, Context, Path], options: dict[str, object], message: str
) -> None:
    platform, ctx, recipe = local_queue
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        _jobs.submit_job(platform, ctx, recipe, **options)  # type: ignore[arg-type]
    assert _count(platform) == 0
    with platform.db.read() as s:
        last = s.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).one()
    assert (last.action, last.outcome) == ("job.write", "refused")


def test_bad_recipes_and_missing_data_queue_nothing(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    platform, ctx, _ = local_queue
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE + "bogus: 1\n")
    with pytest.raises(ValidationError, match="bogus"):
        _jobs.submit_job(platform, ctx, bad)
    with pytest.raises(UsageError, match="not found"):
        _jobs.submit_job(platform, ctx, tmp_path / "missing.yaml")
    # Over 1 MiB: refused by its size before any of it is parsed (its bad key is never reached).
    big = tmp_path / "big.yaml"
    big.write_text(RECIPE + "bogus: 1\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ValidationError, match="at most 1 MiB"):
        _jobs.submit_job(platform, ctx, big)
    with pytest.raises(UsageError, match="is a directory"):
        _jobs.submit_job(platform, ctx, tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(RECIPE.encode() + b"# caf\xe9\n")
    with pytest.raises(ValidationError, match="not UTF-8"):
        _jobs.submit_job(platform, ctx, tmp_path / "latin1.yaml")
    missing = tmp_path / "missing-data.yaml"
    missing.write_text(RECIPE.replace("normalise@1", "normalise@7"))
    with pytest.raises(NotFoundError, match="normalise@7"):
        _jobs.submit_job(platform, ctx, missing)
    assert _count(platform) == 0


def test_a_recipe_whose_data_file_cannot_be_chosen_queues_nothing(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    """normalise@1 has three table files: a recipe naming none of them was queued, and its `yard train` could
    only fail at once ("choose one with data.file"). The per-split form picks train.jsonl for train."""
    platform, ctx, _ = local_queue
    ambiguous = tmp_path / "ambiguous.yaml"
    ambiguous.write_text(
        RECIPE.replace("data: {dataset: normalise@1, file: train.jsonl}", "data: {dataset: normalise@1}")
    )
    with pytest.raises(
        UsageError,
        match=r"data.dataset: normalise@1 has 3 table files; choose one with data.file: "
        r"test.jsonl, train.jsonl, validation.jsonl",
    ):
        _jobs.submit_job(platform, ctx, ambiguous)
    assert _count(platform) == 0
    per_split = tmp_path / "per-split.yaml"
    per_split.write_text(
        RECIPE.replace(
            "data: {dataset: normalise@1, file: train.jsonl}",
            "data: {train: normalise@1, validation: normalise@1, test: normalise@1}",
        )
    )
    assert _jobs.submit_job(platform, ctx, per_split).status == "QUEUED"


def test_unknown_job_ids(local_queue: tuple[Platform, Context, Path]) -> None:
    platform, ctx, recipe = local_queue
    for call in (_jobs.get_job, _jobs.cancel_job, lambda p, c, j: list(_jobs.iter_logs(p, c, j))):
        with pytest.raises(NotFoundError, match="job 42 not found"):
            call(platform, ctx, 42)
        with pytest.raises(UsageError, match="is not a job id"):
            call(platform, ctx, "abc")
    # Another project's job reads as not found.
    job = _jobs.submit_job(platform, ctx, recipe)
    create_project(platform, ctx, "other")
    other = platform.context(project="other")
    with pytest.raises(NotFoundError):
        _jobs.get_job(platform, other, job.id)
    assert _jobs.list_jobs(platform, other) == []


def test_roles(local_queue: tuple[Platform, Context, Path]) -> None:
    platform, admin, recipe = local_queue
    viewer = actor(platform, admin, "vic", "viewer")
    sam = actor(platform, admin, "sam", "scientist")
    sue = actor(platform, admin, "sue", "scientist")
    eve = actor(platform, admin, "eve", "engineer")
    with pytest.raises(PermissionDeniedError, match="scientist"):
        _jobs.submit_job(platform, viewer, recipe)
    with pytest.raises(PermissionDeniedError, match="engineer"):
        _jobs.Worker(platform, sam)
    mine = _jobs.submit_job(platform, sam, recipe)
    theirs = _jobs.submit_job(platform, sam, recipe)
    assert [j.id for j in _jobs.list_jobs(platform, viewer)] == [theirs.id, mine.id]
    with pytest.raises(PermissionDeniedError, match=r"job\.cancel"):
        _jobs.cancel_job(platform, viewer, mine.id)
    with pytest.raises(PermissionDeniedError, match="engineer"):
        _jobs.cancel_job(platform, sue, theirs.id)  # someone else's job
    assert _jobs.cancel_job(platform, sam, mine.id).status == "CANCELLED"
    assert _jobs.cancel_job(platform, eve, theirs.id).status == "CANCELLED"
    with platform.db.read() as s:
        records = s.execute(
            select(AuditRecord.actor, AuditRecord.action, AuditRecord.outcome).where(
                AuditRecord.resource.like("job:%")
            )
        ).all()
    assert ("sam", "job.write", "ok") in records and ("sam", "job.cancel", "ok") in records
    assert ("sue", "job.cancel.any", "denied") in records and ("eve", "job.cancel.any", "ok") in records


def test_a_worker_or_submitter_whose_rights_are_gone_since_it_started_is_refused(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    from modelyard.core import revoke_token, set_role

    platform, admin, recipe = local_queue
    eve = actor(platform, admin, "eve", "engineer")
    sam = actor(platform, admin, "sam", "scientist")
    marks = tmp_path / "marks"
    worker = _jobs.Worker(platform, eve, executor=trivial_executor(marks), exit_when_idle=True)
    revoke_token(platform, admin, eve.via.removeprefix("token:"))
    job = _jobs.submit_job(platform, admin, recipe)
    with pytest.raises(PermissionDeniedError, match="revoked"):
        worker.run()
    assert jobs_by_id(platform)[job.id].status == "QUEUED" and read_marks(marks) == []
    set_role(platform, admin, "sam", "viewer")
    with pytest.raises(PermissionDeniedError, match="now viewer"):
        _jobs.submit_job(platform, sam, recipe)
    assert _count(platform) == 1
    with platform.db.read() as s:
        records = s.execute(select(AuditRecord.actor, AuditRecord.action, AuditRecord.outcome)).all()
    assert ("eve", "worker.run", "denied") in records and ("sam", "job.write", "denied") in records


def test_a_worker_stopped_by_an_error_heartbeats_while_its_jobs_wind_down(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path
) -> None:
    """A worker loop ended by an exception (here its token was revoked) stops its jobs and waits up to the
    kill grace for them to end. It did not heartbeat during that wait, so with a grace longer than the
    heartbeat timeout a reaper re-queued the job as lost (a retry counted) while it was being handed back."""
    from modelyard.core import revoke_token

    platform, admin, recipe = local_queue
    eve = actor(platform, admin, "eve", "engineer")
    slow_stop = fast(platform, job_kill_grace_s=4.0)  # heartbeat timeout 1.5 s
    job = _jobs.submit_job(platform, admin, recipe, args=["--sleep", "120", "--ignore-term"])
    marks = tmp_path / "marks"
    worker = ThreadWorker(slow_stop, eve, marks, cpus=2, exit_when_idle=False)
    reaped = []
    with pytest.raises(PermissionDeniedError, match="revoked"), worker:
        child = wait_for(lambda: read_marks(marks), what="the job to start")[0][3]  # type: ignore[index]
        revoke_token(platform, admin, eve.via.removeprefix("token:"))
        _jobs.submit_job(platform, admin, recipe)  # the worker's next claim is refused: its loop ends
        wait_for(lambda: worker.worker._stop.is_set(), what="the worker to stop")
        while worker.thread.is_alive():  # the 4 s wait for the job that ignores SIGTERM
            reaped += _jobs.reap_stale_jobs(slow_stop, admin)
            time.sleep(0.1)
    assert reaped == [] and not alive(child)
    final = jobs_by_id(platform)[job.id]
    assert (final.status, final.attempts, final.retries, final.worker) == ("QUEUED", 1, 0, None)


def test_attach_run(local_queue: tuple[Platform, Context, Path]) -> None:
    from modelyard.tracking._store import create_run

    platform, ctx, recipe = local_queue
    job = _jobs.submit_job(platform, ctx, recipe)
    run_id = create_run(platform, ctx, "jobs-test")
    with pytest.raises(UsageError, match="not running"):
        _jobs.attach_run(platform, ctx, job.id, run_id)
    with platform.db.write() as s:  # as a worker's claim leaves it
        s.get_one(Job, job.id).status = "RUNNING"
    with pytest.raises(UsageError, match="not a run id"):
        _jobs.attach_run(platform, ctx, job.id, "nope")
    with pytest.raises(NotFoundError, match="run"):
        _jobs.attach_run(platform, ctx, job.id, "0" * 32)
    sue = actor(platform, ctx, "sue", "scientist")  # someone else's job: a worker's role, not a scientist's
    with pytest.raises(PermissionDeniedError, match=r"worker\.run"):
        _jobs.attach_run(platform, sue, job.id, create_run(platform, sue, "hers"))
    assert jobs_by_id(platform)[job.id].run_id is None
    _jobs.attach_run(platform, ctx, str(job.id), run_id)
    info = _jobs.get_job(platform, ctx, job.id)
    assert info.run_id == run_id
    assert _jobs.cli_argv(info, Path("r.yaml"))[-2:] == ["--resume", run_id]
    assert "--resume" not in _jobs.cli_argv(
        info.__class__(**{**info.__dict__, "command": "eval"}), Path("r.yaml")
    )


@pytest.mark.parametrize("memory", ["512", 4096, "1K", "5.9M"])
def test_a_memory_request_no_process_fits_in_is_refused(
    local_queue: tuple[Platform, Context, Path], memory: str | int
) -> None:
    """`--memory 512` (meant as 512M) was 512 bytes: queued, then killed as over its memory at once ("4.2
    MiB in use, 512 requested"), a job that could only fail. Below 6M (Docker's minimum) it is refused."""
    platform, ctx, recipe = local_queue
    with pytest.raises(ValidationError, match=r"at least 6M .*e\.g\. 512M"):
        _jobs.submit_job(platform, ctx, recipe, memory=memory)
    with pytest.raises(ValidationError, match=r"at least 6M"):
        _jobs.Worker(platform, ctx, memory=memory)
    assert jobs_by_id(platform) == {}
    assert _jobs.submit_job(platform, ctx, recipe, memory="6M").memory == 6 << 20
    assert _jobs.submit_job(platform, ctx, recipe, memory=0).memory == 0  # none asked for


def test_memory_and_priority_parsing() -> None:
    assert _jobs.parse_memory("8G") == 8 << 30
    assert _jobs.parse_memory("8Gi") == _jobs.parse_memory("8gb") == 8 << 30
    assert _jobs.parse_memory("1.5G") == 3 << 29
    assert _jobs.parse_memory("512M") == 512 << 20
    assert _jobs.parse_memory("100") == 100
    assert _jobs.format_memory(8 << 30) == "8G" and _jobs.format_memory(1000) == "1000"
    assert (
        _jobs.PRIORITIES["urgent"]
        > _jobs.PRIORITIES["high"]
        > _jobs.PRIORITIES["normal"]
        > _jobs.PRIORITIES["low"]
    )
    assert _jobs.parse_job_id("job:7") == 7
    for bad in ("0", "²", "1e3", "-1", "99999999999", ""):  # "²".isdigit(), but int("²") fails
        with pytest.raises(UsageError, match="is not a job id"):
            _jobs.parse_job_id(bad)


def test_migration_matches_models_for_job_tables(platform: Platform) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from modelyard.core._models import Base

    with platform.db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "job" in repr(d)] == []


# -- Kubernetes: the pod runs `yard worker --job ID`, which mirrors the job into its row ---------------------
CLUSTER = {"database_url": "postgresql://trainer@db.cluster/yard", "artifact_uri": "s3://models/yard"}


@pytest.fixture
def cluster(k8s: FakeCluster) -> FakeCluster:
    """The cluster's API is a fake (no cluster here) that the real kubernetes client talks to. The pod itself
    is the real thing, a Worker bound to the job, as `yard worker --job ID` runs it in the container."""
    return k8s


def _pod_job(platform: Platform, ctx: Context, recipe: Path, **request: object) -> _jobs.JobInfo:
    _, info = _jobs.submit_kubernetes_job(platform, ctx, recipe, **CLUSTER, **request)  # type: ignore[arg-type]
    assert info is not None and info.status == "SUBMITTED"
    return info


def test_a_kubernetes_pod_mirrors_its_job_into_the_store(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path, cluster: FakeCluster
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe, cpus=2, args=["--lines", "3"])
    (manifest,) = cluster.jobs.values()
    pod = manifest["spec"]["template"]["spec"]  # type: ignore[index]
    container = pod["containers"][0]
    worker = ["python", "-m", "modelyard.cli", "worker", "--job", str(job.id), "--name", "$(YARD_POD_NAME)"]
    assert container["command"] == worker
    assert {"name": "YARD_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container[
        "env"
    ]
    assert pod["terminationGracePeriodSeconds"] == int(platform.settings.job_kill_grace_s) + 30
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(manifest, kv.latest_version(), strict=True)
    echoed: list[bytes] = []
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", job=job.id, echo=echoed.append) as w:
        pass
    assert (w.claimed, w.exit_code, w.cpus) == (1, 0, 2.0)  # the pod's resources are the job's
    final = jobs_by_id(platform)[job.id]
    assert (final.status, final.attempts, final.exit_code, final.worker) == ("SUCCEEDED", 1, 0, w.name)
    assert final.finished_at is not None and final.external_id == f"default/yard-train-{job.id}"
    logs = "".join(c.data for c in _jobs.iter_logs(platform, ctx, job.id, follow=True, timeout_s=10))
    assert f"env {job.id}" in logs and "threads 2" in logs and "line 2" in logs and "to stderr" in logs
    assert b"".join(echoed).decode() == logs  # kubectl logs shows the same output
    # A pod started again for a finished job (a retry racing the success) runs nothing.
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", job=job.id) as again:
        pass
    assert again.claimed == 0 and len(read_marks(tmp_path / "marks")) == 1
    with platform.db.read() as s:
        events = s.scalars(
            select(AuditRecord.detail).where(
                AuditRecord.resource == f"job:{job.id}", AuditRecord.action == "job.write"
            )
        ).all()
    assert any('"claim"' in e for e in events) and any('"finish"' in e for e in events)


def test_a_failed_pod_goes_back_to_the_cluster_until_its_last_attempt(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path, cluster: FakeCluster
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe, args=["--exit", "3"], max_retries=1)
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", job=job.id) as first:
        pass
    row = jobs_by_id(platform)[job.id]
    assert (first.exit_code, row.status, row.attempts, row.exit_code, row.worker) == (
        3,
        "SUBMITTED",
        1,
        3,
        None,
    )
    assert row.reason == "attempt 1 of 2 failed: exit code 3; the cluster runs it again"
    assert row.finished_at is None
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", job=job.id) as second:
        pass
    row = jobs_by_id(platform)[job.id]
    assert (second.exit_code, row.status, row.attempts, row.reason) == (3, "FAILED", 2, "exit code 3")
    with platform.db.read() as s:
        attempts = set(s.scalars(select(JobLog.attempt).where(JobLog.job_id == job.id)))
    assert attempts == {1, 2}


def test_a_cancelled_pod_job_stops_and_a_stopped_pod_hands_its_job_back(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path, cluster: FakeCluster
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe, args=["--sleep", "120", "--ignore-term"])
    marks = tmp_path / "marks"
    with ThreadWorker(fast(platform), ctx, marks, job=job.id) as w:
        child = wait_for(lambda: read_marks(marks), what="the job to start")[0][3]  # type: ignore[index]
        assert jobs_by_id(platform)[job.id].status == "RUNNING"
        _jobs.cancel_job(platform, ctx, job.id)
        wait_for(lambda: not alive(child), timeout=15, what="the cancelled job to be killed")
    assert cluster.deleted == [f"default/yard-train-{job.id}"]
    final = jobs_by_id(platform)[job.id]
    assert final.status == "CANCELLED" and final.exit_code is None and not w.finished

    # The cluster stops a pod (eviction, drain): SIGTERM makes the worker stop, as `yard worker` does.
    other = _pod_job(platform, ctx, recipe, args=["--sleep", "120"])
    marks2 = tmp_path / "marks2"
    with ThreadWorker(fast(platform), ctx, marks2, job=other.id) as w2:
        child = wait_for(lambda: read_marks(marks2), what="the job to start")[0][3]  # type: ignore[index]
        w2.stop()
    assert not alive(child)
    row = jobs_by_id(platform)[other.id]
    assert (row.status, row.attempts, row.worker) == ("SUBMITTED", 1, None)
    assert row.reason == f"pod {w2.name} was stopped; the cluster may run it again"
    assert w2.exit_code == -signal.SIGTERM


def test_a_second_pod_waits_while_the_first_is_alive_and_never_takes_its_job(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path, cluster: FakeCluster
) -> None:
    # A stray pod, or the owner running `yard worker --job` by hand, must not kill the live pod's job.
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe, args=["--sleep", "4"])
    marks = tmp_path / "marks"
    with ThreadWorker(fast(platform), ctx, marks, job=job.id, name="pod-a") as first:
        child = wait_for(lambda: read_marks(marks), what="the job to start")[0][3]  # type: ignore[index]
        with ThreadWorker(fast(platform), ctx, marks, job=job.id, name="pod-b") as second:
            time.sleep(1.5)  # heartbeats every 0.2 s, timeout 1.5 s: the first pod stays live
            assert second.claimed == 0 and alive(child)
            row = jobs_by_id(platform)[job.id]
            assert (row.status, row.worker, row.attempts) == ("RUNNING", "pod-a", 1)
            first.stop()  # evicted: hands the job back, and the waiting pod runs it
    assert (first.claimed, first.exit_code, second.claimed, second.exit_code) == (1, -signal.SIGTERM, 1, 0)
    row = jobs_by_id(platform)[job.id]
    assert (row.status, row.worker, row.attempts) == ("SUCCEEDED", "pod-b", 2)
    assert [(m[1], m[2]) for m in read_marks(marks)] == [(1, "pod-a"), (2, "pod-b")]


def test_a_pod_that_cannot_start_its_job_leaves_it_to_the_clusters_retry(
    local_queue: tuple[Platform, Context, Path], tmp_path: Path, cluster: FakeCluster
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe, max_retries=1)

    def broken(job: _jobs.JobInfo, recipe_file: Path) -> list[str]:
        raise FileNotFoundError("no python in this image")

    for attempt, status in ((1, "SUBMITTED"), (2, "FAILED")):
        w = _jobs.Worker(fast(platform), ctx, job=job.id, executor=broken)
        assert w.run() == 1 and w.exit_code == 1  # never 0: the cluster must see the failure
        row = jobs_by_id(platform)[job.id]
        assert (row.status, row.attempts) == (status, attempt)
        assert "could not start: FileNotFoundError: no python in this image" in (row.reason or "")


def test_a_silent_pod_is_reaped_back_to_the_cluster_then_failed(
    queue: tuple[Platform, Context, Path], tmp_path: Path, cluster: FakeCluster
) -> None:
    platform, ctx, recipe = queue
    job = _pod_job(platform, ctx, recipe, args=["--sleep", "120"], max_retries=1)
    marks = tmp_path / "marks"

    def pod_dies_with_its_node(attempt: int) -> None:
        """SIGKILL, no last word; the job's process dies with it (PDEATHSIG)."""
        sigkill_mid_job(spawn_worker(platform, f"pod-{attempt}", marks, "--job", str(job.id)), marks, attempt)

    short = fast(platform)
    try:
        for attempt, expected in ((1, "SUBMITTED"), (2, "FAILED")):
            pod_dies_with_its_node(attempt)
            assert jobs_by_id(platform)[job.id].status == "RUNNING"
            reaped = wait_for(lambda: _jobs.reap_stale_jobs(short, ctx), what="the reaper")
            assert reaped == [(job.id, expected)]
            row = jobs_by_id(platform)[job.id]
            assert (row.status, row.attempts, row.worker, row.retries) == (expected, attempt, None, 0)
            assert row.reason is not None and f"pod pod-{attempt}" in row.reason
    finally:
        short.close()
    assert "last attempt (max retries 1)" in (row.reason or "")
    assert row.finished_at is not None


def test_who_may_run_a_pod_job(local_queue: tuple[Platform, Context, Path], cluster: FakeCluster) -> None:
    platform, admin, recipe = local_queue
    viewer = actor(platform, admin, "vic", "viewer")
    sam = actor(platform, admin, "sam", "scientist")
    sue = actor(platform, admin, "sue", "scientist")
    eve = actor(platform, admin, "eve", "engineer")
    job = _pod_job(platform, sam, recipe)
    assert _jobs.Worker(platform, sam, job=job.id).action == "job.write"  # the submitter's own token
    assert _jobs.Worker(platform, eve, job=f"job:{job.id}").action == "worker.run"
    with pytest.raises(PermissionDeniedError, match="engineer"):
        _jobs.Worker(platform, sue, job=job.id)  # could otherwise mark anyone's job done
    with pytest.raises(PermissionDeniedError):
        _jobs.Worker(platform, viewer, job=job.id)
    local = _jobs.submit_job(platform, sam, recipe)
    with pytest.raises(UsageError, match="local job: workers claim it from the queue"):
        _jobs.Worker(platform, sam, job=local.id)
    with pytest.raises(NotFoundError, match="job 999 not found"):
        _jobs.Worker(platform, eve, job=999)
    for bad in ("x", 0, "-1", ""):
        with pytest.raises(UsageError, match="not a job id"):
            _jobs.Worker(platform, eve, job=bad)
    for override in ({"cpus": 1}, {"gpus": 0}, {"memory": "1G"}, {"max_jobs": 1}):
        with pytest.raises(UsageError, match="runs it with the resources it asked for: drop --"):
            _jobs.Worker(platform, eve, job=job.id, **override)  # type: ignore[arg-type]
    create_project(platform, admin, "other")
    with pytest.raises(NotFoundError):
        _jobs.Worker(platform, platform.context(project="other"), job=job.id)
    assert {j.status for j in _jobs.list_jobs(platform, admin)} == {"SUBMITTED", "QUEUED"}  # unchanged


# -- what the cluster says about jobs whose pod never reported back ------------------------------------------
def test_jobs_the_cluster_gave_up_on_end_failed_and_waiting_pods_say_why(
    queue: tuple[Platform, Context, Path], tmp_path: Path, cluster: FakeCluster
) -> None:
    platform, ctx, recipe = queue
    pull, sched, failed, gone, done, starting = (_pod_job(platform, ctx, recipe) for _ in range(6))
    local = _jobs.submit_job(platform, ctx, recipe)
    cluster.waiting_pod(pull.external_id, "ImagePullBackOff", 'Back-off pulling image "modelyard:9"')  # type: ignore[arg-type]
    cluster.waiting_pod(
        sched.external_id,  # type: ignore[arg-type]
        "Unschedulable",
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        unschedulable=True,
    )
    cluster.waiting_pod(starting.external_id, "ContainerCreating")  # type: ignore[arg-type]
    cluster.fail(failed.external_id)  # type: ignore[arg-type]
    cluster.remove(gone.external_id)  # type: ignore[arg-type]
    cluster.complete(done.external_id)  # type: ignore[arg-type]
    cluster.requests.clear()

    listed = {j.id: j for j in _jobs.list_jobs(platform, ctx)}
    # One list of Jobs and one of pods for the namespace, however many jobs wait there; a Job missing
    # from the list is read by name before it counts as gone.
    assert cluster.requests == [
        ("GET", "/apis/batch/v1/namespaces/default/jobs"),
        ("GET", f"/apis/batch/v1/namespaces/default/jobs/yard-train-{gone.id}"),
        ("GET", "/api/v1/namespaces/default/pods"),
    ]
    assert {i: j.status for i, j in listed.items()} == {
        pull.id: "SUBMITTED",
        sched.id: "SUBMITTED",
        starting.id: "SUBMITTED",
        failed.id: "FAILED",
        gone.id: "FAILED",
        done.id: "FAILED",
        local.id: "QUEUED",
    }
    waits = {i: j.waiting for i, j in listed.items() if j.waiting}
    assert set(waits) == {pull.id, sched.id}  # a pod that is only starting has nothing to say
    assert re.fullmatch(
        rf'pod yard-train-{pull.id}-\w+: ImagePullBackOff: Back-off pulling image "modelyard:9"',
        waits[pull.id],
    )
    assert re.fullmatch(
        rf"pod yard-train-{sched.id}-\w+: Unschedulable: 0/3 nodes are available: "
        r"3 Insufficient nvidia.com/gpu.",
        waits[sched.id],
    )
    ext = {j.id: j.external_id for j in (failed, gone, done)}
    assert listed[failed.id].reason == (
        f"Kubernetes job {ext[failed.id]} failed: BackoffLimitExceeded: "
        "Job has reached the specified backoff limit"
    )
    assert listed[gone.id].reason == (
        f"Kubernetes job {ext[gone.id]} no longer exists (deleted, or removed after it finished) and its "
        "last attempt did not report back"
    )
    assert "completed, but its pod did not record a result" in (listed[done.id].reason or "")
    assert all(listed[i].finished_at is not None for i in ext)
    with platform.db.read() as s:
        audited = s.execute(
            select(AuditRecord.resource, AuditRecord.actor, AuditRecord.detail).where(
                AuditRecord.actor == _jobs.REAPER
            )
        ).all()
    assert sorted((r, json.loads(d)["cluster"]) for r, _, d in audited) == sorted(
        [(f"job:{failed.id}", "failed"), (f"job:{gone.id}", "gone"), (f"job:{done.id}", "complete")]
    )

    # One job: get_job asks about that one only; final jobs are never asked about again.
    cluster.requests.clear()
    assert _jobs.get_job(platform, ctx, pull.id).waiting == listed[pull.id].waiting
    assert _jobs.get_job(platform, ctx, failed.id).status == "FAILED"
    assert len(cluster.requests) == 2
    # The pod gets its image and runs: the row is the worker's again, and the cluster's later
    # "complete" changes nothing.
    with ThreadWorker(fast(platform), ctx, tmp_path / "marks", job=pull.id) as w:
        pass
    assert w.exit_code == 0
    cluster.complete(pull.external_id)  # type: ignore[arg-type]
    after = _jobs.get_job(platform, ctx, pull.id)
    assert (after.status, after.waiting, after.reason) == ("SUCCEEDED", None, None)


def test_a_job_the_cluster_gave_up_on_is_recorded_with_the_cluster_it_went_to(
    local_queue: tuple[Platform, Context, Path], cluster: FakeCluster
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe)
    assert job.cluster == cluster.url
    with platform.db.read() as s:
        (detail,) = s.scalars(
            select(AuditRecord.detail).where(
                AuditRecord.resource == f"job:{job.id}", AuditRecord.action == "job.write"
            )
        ).all()
    assert json.loads(detail)["cluster"] == cluster.url


def test_a_reader_whose_configuration_reaches_another_cluster_changes_nothing(
    local_queue: tuple[Platform, Context, Path],
    cluster: FakeCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    platform, ctx, recipe = local_queue
    jobs = [_pod_job(platform, ctx, recipe) for _ in range(2)]
    cluster.fail(jobs[0].external_id)  # type: ignore[arg-type]
    with fake_kubernetes() as other:  # a laptop's current context: another cluster, without these Jobs
        monkeypatch.setenv("KUBECONFIG", str(other.write_kubeconfig(tmp_path / "other")))
        listed = _jobs.list_jobs(platform, ctx)
        assert other.requests == []  # a missing Job there says nothing: not even asked
    assert [j.status for j in listed] == ["SUBMITTED", "SUBMITTED"]
    assert (
        listed[0].waiting
        == f"submitted to {cluster.url}; this machine's Kubernetes configuration reaches {other.url}"
    )
    # Older rows, recorded before the cluster was: never concluded about.
    with platform.db.write() as s:
        s.execute(update(Job).values(cluster=None))
    assert [j.status for j in _jobs.list_jobs(platform, ctx)] == ["SUBMITTED", "SUBMITTED"]
    # Back on the cluster the jobs went to (recorded again): the failed one ends.
    with platform.db.write() as s:
        s.execute(update(Job).values(cluster=cluster.url))
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "back")))
    assert {j.id: j.status for j in _jobs.list_jobs(platform, ctx)} == {
        jobs[0].id: "FAILED",
        jobs[1].id: "SUBMITTED",
    }


def test_a_job_missing_from_the_list_but_there_by_name_is_not_gone(
    local_queue: tuple[Platform, Context, Path], cluster: FakeCluster
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe)
    del cluster.jobs[job.external_id]["metadata"]["labels"]["modelyard.dev/job-id"]  # type: ignore[index]
    assert _jobs.get_job(platform, ctx, job.id).status == "SUBMITTED"
    cluster.fail(job.external_id, "DeadlineExceeded", "too long")  # type: ignore[arg-type]
    assert (
        _jobs.get_job(platform, ctx, job.id).reason
        == f"Kubernetes job {job.external_id} failed: DeadlineExceeded: too long"
    )


def test_one_namespace_refused_leaves_the_others_asked(
    local_queue: tuple[Platform, Context, Path], cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    platform, ctx, recipe = local_queue
    team = _pod_job(platform, ctx, recipe, namespace="team")
    mine = _pod_job(platform, ctx, recipe)
    cluster.fail(team.external_id)  # type: ignore[arg-type]
    cluster.fail(mine.external_id)  # type: ignore[arg-type]
    cluster.refused["jobs:team"] = 403
    assert {j.id: j.status for j in _jobs.list_jobs(platform, ctx)} == {
        team.id: "SUBMITTED",
        mine.id: "FAILED",
    }
    assert "could not ask Kubernetes about the jobs of namespace team: 403 Forbidden" in caplog.text


def test_an_unanswering_cluster_costs_one_try_per_call(
    local_queue: tuple[Platform, Context, Path],
    cluster: FakeCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An API server that accepts connections and never answers: one connection, one read timeout, then
    the listing goes on without it (urllib3 would otherwise retry three times, each as long)."""
    from modelyard.training import _k8s

    platform, ctx, recipe = local_queue
    jobs = [_pod_job(platform, ctx, recipe, namespace=ns) for ns in ("default", "team")]
    accepted: list[socket.socket] = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        threading.Thread(
            target=lambda: accepted.extend(silent.accept() for _ in range(8)), daemon=True
        ).start()
        with platform.db.write() as s:  # as if submitted there
            s.execute(update(Job).values(cluster=url))
        cluster.url = url
        monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "silent")))
        monkeypatch.setattr(_k8s, "_TIMEOUT", (0.5, 0.5))
        listed = _jobs.list_jobs(platform, ctx)
        assert [j.status for j in listed] == ["SUBMITTED", "SUBMITTED"]
        assert len(accepted) == 1  # one try, and the second namespace is not waited for too
    assert "could not ask Kubernetes about the jobs of namespace" in caplog.text and jobs


def test_a_missing_or_malformed_kubeconfig_is_a_warning_not_a_failure(
    local_queue: tuple[Platform, Context, Path],
    cluster: FakeCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe)
    cluster.fail(job.external_id)  # type: ignore[arg-type]
    for text in (None, "clusters: [: not yaml", "- a list", "contexts: 5\ncurrent-context: x"):
        if text is not None:  # None: there is no kubeconfig at that path
            (tmp_path / "bad").write_text(text)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "bad"))
        caplog.clear()
        assert _jobs.get_job(platform, ctx, job.id).status == "SUBMITTED"
        assert "no usable Kubernetes configuration" in caplog.text


def test_a_pod_that_claims_its_job_while_the_cluster_is_asked_wins(
    local_queue: tuple[Platform, Context, Path], cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.training import _k8s

    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe)
    cluster.fail(job.external_id)  # type: ignore[arg-type]
    real = _k8s.cluster_jobs

    def answer_then(**row: object) -> Callable[[object], object]:
        """The cluster answers, then the row changes before the answer is acted on."""

        def wrapper(ids: object) -> object:
            answer = real(ids)  # type: ignore[arg-type]
            with platform.db.write() as s:
                s.execute(update(Job).where(Job.id == job.id).values(**row))
            return answer

        return wrapper

    monkeypatch.setattr(_k8s, "cluster_jobs", answer_then(status="RUNNING", attempts=1))  # the pod claims it
    assert _jobs.sync_cluster_jobs(platform, ctx) == {}
    assert jobs_by_id(platform)[job.id].status == "RUNNING"  # the heartbeat reaper decides now
    # Claimed, failed and handed back for the cluster's retry in between: SUBMITTED again, one attempt on.
    with platform.db.write() as s:  # the first attempt handed back
        s.execute(update(Job).where(Job.id == job.id).values(status="SUBMITTED", attempts=1))
    monkeypatch.setattr(_k8s, "cluster_jobs", answer_then(status="SUBMITTED", attempts=2))
    _jobs.sync_cluster_jobs(platform, ctx)
    assert jobs_by_id(platform)[job.id].status == "SUBMITTED"  # the next read decides on what is now


def test_a_cluster_that_cannot_be_asked_changes_nothing(
    local_queue: tuple[Platform, Context, Path],
    cluster: FakeCluster,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe)
    cluster.waiting_pod(job.external_id, "ErrImagePull")  # type: ignore[arg-type]
    cluster.fail(job.external_id)  # type: ignore[arg-type]
    cluster.refused["jobs"] = 403
    assert [j.status for j in _jobs.list_jobs(platform, ctx)] == ["SUBMITTED"]
    assert "could not ask Kubernetes about the jobs of namespace default: 403 Forbidden" in caplog.text
    # Pods refused only: the Jobs' states still count, the wait is just not explained.
    del cluster.refused["jobs"]
    cluster.refused["pods"] = 403
    other = _pod_job(platform, ctx, recipe)
    cluster.waiting_pod(other.external_id, "ErrImagePull")  # type: ignore[arg-type]
    caplog.clear()
    assert {j.id: (j.status, j.waiting) for j in _jobs.list_jobs(platform, ctx)} == {
        job.id: ("FAILED", None),
        other.id: ("SUBMITTED", None),
    }
    assert "could not list the pods of namespace default: 403 Forbidden" in caplog.text
    # No client at all (a configuration that is missing or malformed: the next test).
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    caplog.clear()
    assert _jobs.get_job(platform, ctx, other.id).status == "SUBMITTED"
    assert "pip install 'modelyard[k8s]'" in caplog.text


def test_following_the_logs_of_a_job_the_cluster_gave_up_on_ends(
    local_queue: tuple[Platform, Context, Path], cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe)
    monkeypatch.setattr(_jobs, "CLUSTER_POLL_S", 0.2)
    threading.Timer(0.5, cluster.fail, [job.external_id, "DeadlineExceeded", "too long"]).start()
    start = time.monotonic()
    assert list(_jobs.iter_logs(platform, ctx, job.id, follow=True, poll_s=0.05, timeout_s=20)) == []
    assert time.monotonic() - start < 10
    final = _jobs.get_job(platform, ctx, job.id)
    assert (final.status, final.reason) == (
        "FAILED",
        f"Kubernetes job {job.external_id} failed: DeadlineExceeded: too long",
    )


def test_a_job_the_cluster_refuses_to_create_is_not_recorded(
    local_queue: tuple[Platform, Context, Path], cluster: FakeCluster
) -> None:
    platform, ctx, recipe = local_queue
    cluster.refused["jobs"] = 403
    with pytest.raises(
        BackendError, match=r"Kubernetes did not create job default/yard-train-\d+: 403 Forbidden"
    ):
        _pod_job(platform, ctx, recipe)
    assert jobs_by_id(platform) == {} and cluster.jobs == {}


def test_a_job_whose_pods_cannot_be_created_says_why(
    queue: tuple[Platform, Context, Path], cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    platform, ctx, recipe = queue
    quota, starting, silent = (_pod_job(platform, ctx, recipe) for _ in range(3))
    assert quota.external_id and starting.external_id and silent.external_id
    refused = 'Error creating: pods "yard-train-{}-x" is forbidden: exceeded quota: compute, requested: cpu=2'
    cluster.failed_create(quota.external_id, "an earlier refusal", when="2026-01-01T00:00:00Z")
    cluster.failed_create(quota.external_id, refused.format(quota.id), when="2026-01-01T00:05:00Z")
    cluster.failed_create(quota.external_id, "older still", when="2025-12-31T00:00:00Z")
    # An earlier Job of the same name (another UID), and a Job whose pod exists now: their events say nothing.
    cluster.failed_create(silent.external_id, "an earlier Job's refusal", uid="0-earlier")
    cluster.failed_create(starting.external_id, "refused once, created since")
    cluster.waiting_pod(starting.external_id, "ContainerCreating")
    # A leftover pod of an earlier Job of the same name (another owner UID) is not quota's pod.
    stale = cluster.waiting_pod(quota.external_id, "ImagePullBackOff", "an earlier Job's image")
    cluster.pods[f"default/{stale}"]["metadata"]["ownerReferences"][0]["uid"] = "0-earlier"
    cluster.requests.clear()

    listed = {j.id: j for j in _jobs.list_jobs(platform, ctx)}
    assert {i: (j.status, j.waiting) for i, j in listed.items()} == {
        quota.id: ("SUBMITTED", f"job yard-train-{quota.id}: FailedCreate: {refused.format(quota.id)}"),
        starting.id: ("SUBMITTED", None),
        silent.id: ("SUBMITTED", None),
    }
    # Events are asked for once per namespace, and only when a Job has no pod at all.
    assert cluster.requests == [
        ("GET", "/apis/batch/v1/namespaces/default/jobs"),
        ("GET", "/api/v1/namespaces/default/pods"),
        ("GET", "/api/v1/namespaces/default/events"),
    ]
    cluster.pods.clear()
    for job in (quota, silent, starting):
        cluster.waiting_pod(job.external_id, "ContainerCreating")  # type: ignore[arg-type]
    cluster.requests.clear()
    assert all(j.waiting is None for j in _jobs.list_jobs(platform, ctx))
    assert ("GET", "/api/v1/namespaces/default/events") not in cluster.requests
    # Events refused: the wait is not explained, and the Jobs' states still count.
    cluster.pods.clear()
    cluster.refused["events"] = 403
    cluster.fail(silent.external_id)
    assert {j.id: (j.status, j.waiting) for j in _jobs.list_jobs(platform, ctx)} == {
        quota.id: ("SUBMITTED", None),
        starting.id: ("SUBMITTED", None),
        silent.id: ("FAILED", None),
    }
    assert "could not list the events of namespace default: 403 Forbidden" in caplog.text


def test_a_job_whose_name_now_belongs_to_another_job_is_gone_and_never_deleted(
    local_queue: tuple[Platform, Context, Path], cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    platform, ctx, recipe = local_queue
    replaced, cancelled, older = (_pod_job(platform, ctx, recipe) for _ in range(3))
    assert replaced.external_id and cancelled.external_id and older.external_id
    with platform.db.read() as s:
        uids = dict(s.execute(select(Job.id, Job.cluster_uid)).all())
    assert uids == {
        j.id: cluster.jobs[j.external_id]["metadata"]["uid"] for j in (replaced, cancelled, older)
    }  # type: ignore[index]
    # Someone else's Job took the names (ours were removed after their TTL, theirs created since).
    for job in (replaced, cancelled, older):
        cluster.recreate(job.external_id)  # type: ignore[arg-type]
    with platform.db.write() as s:  # recorded before UIDs were: never concluded about
        s.execute(update(Job).where(Job.id == older.id).values(cluster_uid=None))
    listed = {j.id: j for j in _jobs.list_jobs(platform, ctx)}
    uid = cluster.jobs[replaced.external_id]["metadata"]["uid"]
    assert listed[replaced.id].status == "FAILED"
    assert listed[replaced.id].reason == (
        f"Kubernetes job {replaced.external_id} no longer exists (deleted, or removed after it finished; its "
        f"name belongs to another Job now (UID {uid})) and its last attempt did not report back"
    )
    assert listed[older.id].status == "SUBMITTED"
    # Cancelling a job whose name was reused leaves the other Job alone (a UID precondition on the delete).
    with platform.db.write() as s:  # as if read before the name was reused
        s.execute(update(Job).where(Job.id == cancelled.id).values(status="SUBMITTED"))
    assert _jobs.cancel_job(platform, ctx, cancelled.id).status == "CANCELLED"
    assert cancelled.external_id in cluster.jobs and cluster.deleted == []
    assert f"Kubernetes job {cancelled.external_id} is another Job now" in caplog.text


def test_cancel_takes_effect_while_the_cluster_cannot_be_reached_and_its_job_is_deleted_later(
    local_queue: tuple[Platform, Context, Path],
    cluster: FakeCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The row is what the pod obeys: a cancel is recorded whatever the cluster says, a pod that starts
    anyway runs nothing, and the Job is deleted by the next command that reaches the cluster."""
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe)
    ext = job.external_id
    assert ext is not None
    cluster.refused["jobs"] = 503  # the API server fails
    info = _jobs.cancel_job(platform, ctx, job.id)
    assert info.status == "CANCELLED" and info.finished_at is not None
    assert info.reason is not None and info.reason.startswith(f"cancelled by {ctx.user} while SUBMITTED")
    assert f"Kubernetes job {ext} is not deleted yet" in info.reason and "503" in info.reason
    assert jobs_by_id(platform)[job.id].status == "CANCELLED" and ext in cluster.jobs
    # Its pod starts anyway: it runs nothing.
    assert _jobs.Worker(fast(platform), ctx, job=job.id).run() == 0
    # Still failing: ls and show say so and change nothing.
    assert _jobs.get_job(platform, ctx, job.id).reason == info.reason
    assert f"could not delete Kubernetes job {ext}" in caplog.text
    # The cluster answers again: the next reader deletes it and the reason says the cancel is complete.
    del cluster.refused["jobs"]
    assert [j.reason for j in _jobs.list_jobs(platform, ctx)] == [f"cancelled by {ctx.user} while SUBMITTED"]
    assert cluster.deleted == [ext]
    _jobs.list_jobs(platform, ctx)
    assert cluster.deleted == [ext]  # once

    # A cluster that cannot be reached at all (nothing listens at its address), then a cancel again.
    other = _pod_job(platform, ctx, recipe)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with platform.db.write() as s:
        s.execute(update(Job).where(Job.id == other.id).values(cluster=dead))
    real = cluster.url
    cluster.url = dead
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "dead")))
    info = _jobs.cancel_job(platform, ctx, other.id)
    assert info.status == "CANCELLED" and "is not deleted yet" in (info.reason or "")
    assert "ConnectionRefused" in (info.reason or "") or "Connection refused" in (info.reason or "")
    again = _jobs.cancel_job(platform, ctx, other.id)  # a second cancel tries again; still no cluster
    assert again.status == "CANCELLED" and "is not deleted yet" in (again.reason or "")
    with platform.db.write() as s:  # the cluster is back (at its old address)
        s.execute(update(Job).where(Job.id == other.id).values(cluster=real))
    cluster.url = real
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "back")))
    assert _jobs.cancel_job(platform, ctx, other.id).reason == f"cancelled by {ctx.user} while SUBMITTED"
    assert cluster.deleted == [ext, other.external_id]


def test_cancel_from_a_machine_that_reaches_another_cluster_deletes_nothing_there(
    local_queue: tuple[Platform, Context, Path],
    cluster: FakeCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    platform, ctx, recipe = local_queue
    job = _pod_job(platform, ctx, recipe)
    with fake_kubernetes() as other:  # a Job of that name there is another one: never deleted
        other.jobs[job.external_id] = json.loads(json.dumps(cluster.jobs[job.external_id]))  # type: ignore[index]
        monkeypatch.setenv("KUBECONFIG", str(other.write_kubeconfig(tmp_path / "other")))
        info = _jobs.cancel_job(platform, ctx, job.id)  # takes effect in the store, where its pod looks
        assert info.status == "CANCELLED"
        assert re.search(f"was submitted to {cluster.url}, but .* reaches {other.url}", info.reason or "")
        assert other.requests == [] and job.external_id in other.jobs
    assert cluster.deleted == []
    # Back on the job's cluster's context: the next `yard jobs ls` deletes it there.
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "own")))
    assert [j.reason for j in _jobs.list_jobs(platform, ctx)] == [f"cancelled by {ctx.user} while SUBMITTED"]
    assert cluster.deleted == [job.external_id]


def test_a_create_that_got_no_answer_is_recorded_only_if_the_cluster_has_this_submission(
    local_queue: tuple[Platform, Context, Path],
    cluster: FakeCluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from modelyard.training import _k8s

    platform, ctx, recipe = local_queue
    monkeypatch.setattr(_k8s, "_CREATE_TIMEOUT", (3.0, 0.3))
    cluster.create_delay = 1.5  # the API server creates the Job, its answer comes after the timeout
    job = _pod_job(platform, ctx, recipe)
    made = cluster.jobs[job.external_id]  # type: ignore[index]
    with platform.db.read() as s:
        assert s.get(Job, job.id).cluster_uid == made["metadata"]["uid"]  # type: ignore[union-attr]
    assert made["metadata"]["annotations"][_k8s.SUBMISSION_ANNOTATION]
    assert f"the creation of Kubernetes job {job.external_id} was not confirmed" in caplog.text
    assert cluster.requests[-3:] == [  # sent again: 409, read back, its nonce is this submission's
        ("POST", "/apis/batch/v1/namespaces/default/jobs"),
        ("POST", "/apis/batch/v1/namespaces/default/jobs"),
        ("GET", f"/apis/batch/v1/namespaces/default/jobs/yard-train-{job.id}"),
    ]
    # A server-side failure (the API server's own 504) after the Job was created, or while the create goes
    # on behind it and lands only later: recorded either way.
    cluster.create_delay, cluster.create_status = 0, 504
    late = _pod_job(platform, ctx, recipe)
    cluster.create_deferred = True
    later = _pod_job(platform, ctx, recipe)
    for info in (late, later):
        assert info.external_id in cluster.jobs and info.cluster == cluster.url
        with platform.db.read() as s:  # the Job that exists (the later one: the retry's)
            uid = s.get(Job, info.id).cluster_uid  # type: ignore[union-attr]
        assert uid == cluster.jobs[info.external_id]["metadata"]["uid"]  # type: ignore[index]
        assert f"job {info.external_id} was not confirmed (504 Gateway Timeout)" in caplog.text
    cluster.create_status, cluster.create_delay = 0, 1.5
    # The create was lost, twice: nothing recorded, and the error says what may still appear.
    cluster.create_lost = True
    with pytest.raises(
        BackendError,
        match=r"did not confirm the creation of job default/yard-train-\d+ \(ReadTimeoutError.*\) and has no "
        r"Job of that name yet; nothing was recorded, but a create still under way may make one: check with "
        r"`kubectl get job yard-train-\d+ -n default`",
    ):
        _pod_job(platform, ctx, recipe)
    recorded = [job.id, late.id, later.id]
    assert list(jobs_by_id(platform)) == recorded
    assert list(cluster.jobs) == [j.external_id for j in (job, late, later)]
    # A Job of that name that is not this submission's: not taken for it, after a lost create or a 409.
    foreign = json.loads(json.dumps(made))
    foreign["metadata"].update(
        name=f"yard-train-{later.id + 1}", annotations={_k8s.SUBMISSION_ANNOTATION: "x"}
    )
    cluster.jobs[f"default/yard-train-{later.id + 1}"] = foreign
    for lost in (True, False):
        cluster.create_lost = lost
        with pytest.raises(BackendError, match="a Job of that name that is not this submission's exists"):
            _pod_job(platform, ctx, recipe)
    assert list(jobs_by_id(platform)) == recorded


# -- the real command: yard train through the queue ---------------------------------------------------------
def _train_available() -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "train", "--help"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_train_job_end_to_end(tmp_path: Path, platform: Platform) -> None:
    if not _train_available():
        pytest.skip("`yard train` is not available yet")
    import yaml

    ctx = platform.context()
    env = _env(platform)
    data = tmp_path / "data"
    make = [sys.executable, "-m", "modelyard.cli", "examples", "make-data", str(data), "--rows", "200"]
    subprocess.run([*make, "--version", "normalise"], env=env, check=True, capture_output=True)
    example = Path(__file__).parents[2] / "examples" / "flan-t5" / "recipe-tiny.yaml"
    doc = yaml.safe_load(example.read_text())
    doc["hyperparameters"].update(max_steps=2, warmup_steps=0, batch_size=8)
    doc.get("train", {}).update(eval_every_steps=2, eval_max_samples=8)
    doc.get("checkpoints", {}).update(every_steps=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    job = _jobs.submit_job(platform, ctx, recipe, cpus=1)
    worker = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "worker", "--cpus", "2", "--exit-when-idle"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr
    info = _jobs.get_job(platform, ctx, job.id)
    logs = "".join(c.data for c in _jobs.iter_logs(platform, ctx, job.id))
    assert info.status == "SUCCEEDED", logs[-3000:]
    assert info.run_id is not None  # yard train attached its run to the job (YARD_JOB_ID)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker_main(sys.argv[2:])
