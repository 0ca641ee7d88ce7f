"""The job queue: jobs are rows of the metadata store, claimed by workers on any number of machines.

* ``submit_job`` validates the recipe (``load_recipe``: a bad recipe queues nothing) and stores its YAML
  text in the row, so a worker on another machine needs nothing but the store.
* A :class:`Worker` claims the highest-priority QUEUED job of its project that fits its free CPUs, GPUs and
  memory: ``SELECT ... ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED`` on PostgreSQL (two
  workers never get the same row and never wait on each other), a ``BEGIN IMMEDIATE`` transaction on
  SQLite (writers are serialised). No backfill: when the best job that could ever run on this worker does
  not fit its *free* resources, the worker waits rather than start a lower-priority one, so a big
  high-priority job is never starved by a stream of small ones. With ``job_aging_s`` set, a queued job
  gains one priority level per that many seconds waited, up to ``job_aging_limit``, so neither is a
  low-priority one by a stream of higher-priority jobs (aging).
* The job runs as ``python -m modelyard.cli <command> <recipe file> [args]`` (no shell) in a new session,
  with ``YARD_JOB_ID`` set; its stdout and stderr are stored as chunks in ``job_logs``. The worker refreshes
  the row's heartbeat; a job whose heartbeat is stale (its worker died) is re-queued by any worker or reader
  with ``retries`` + 1, or FAILED past ``max_retries``; a retried ``train`` job with a run gets
  ``--resume RUN``. The child gets ``PR_SET_PDEATHSIG`` (Linux), so a SIGKILLed worker does not leave its
  job running beside the retry.
* Cancel marks the row CANCELLED; the worker notices on its next poll and sends SIGTERM to the job's
  process group, then SIGKILL after ``job_kill_grace_s``.
* A Kubernetes job's pod runs ``yard worker --job ID``: the same Worker, bound to that one job, so the row
  mirrors the pod (RUNNING, the log, the exit code, heartbeats) exactly as for a local job. A failed attempt
  with retries left goes back to SUBMITTED, since the cluster, not a worker, runs the next one.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, and_, case, func, literal, or_, select, update
from sqlalchemy.orm import Session

from modelyard.core import _audit
from modelyard.core._models import Job, JobLog, Project, Run
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.errors import (
    BackendError,
    NotFoundError,
    PermissionDeniedError,
    UsageError,
    ValidationError,
    YardError,
)

if TYPE_CHECKING:
    from modelyard.training._recipe import Recipe

log = logging.getLogger("modelyard.jobs")

COMMANDS = ("train", "tune", "eval")
PRIORITIES = {"low": 10, "normal": 20, "high": 30, "urgent": 40}
HEARTBEATS_PER_TIMEOUT = 3  # a worker's heartbeat interval is at most a third of the heartbeat timeout
PRIORITY_LEVEL = 10  # between two named priorities: what a job gains per job_aging_s waited
STATUSES = ("QUEUED", "RUNNING", "SUBMITTED", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
BACKENDS = ("local", "kubernetes")
REAPER = "system:reaper"
MAX_RECIPE_BYTES = 1 << 20
MAX_ARGS = 64
MAX_ARG_CHARS = 1000
MAX_CPUS = 4096.0
MAX_GPUS = 64
MAX_MEMORY = 1 << 50  # 1 PiB
# Docker's minimum: `--memory 512`, meant as 512M, was 512 bytes, and the job was killed at once as over it.
MIN_MEMORY = 6 << 20
CLUSTER_POLL_S = 10.0  # how often `yard jobs logs -f` asks the cluster about a job that has not started
MAX_LOG_CHARS = 64 << 20  # per attempt; past it the output is dropped with one marker line
_LOG_CHUNK = 256 << 10
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
# Binary units, as Docker's --memory reads them: 8G is 8 GiB. Kubernetes' own suffixes (Gi, Mi) work too.
_MEMORY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


# -- input checks: bad input is refused before anything is written -------------------------------------------
def parse_memory(value: str | int | None) -> int:
    """Bytes from ``8G``, ``512M``, ``1.5Gi``, ``8GB`` or a number of bytes (binary units: 1K = 1024)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValidationError("memory must be a size like 8G or 512M, not a boolean")
    if isinstance(value, int):
        n = value
    else:
        m = _MEMORY_RE.match(str(value))
        if m is None:
            raise ValidationError(
                f"memory {value!r} is not a size; expected a number with an optional unit K, M, G, T or P "
                "(binary: 8G = 8 GiB), e.g. --memory 8G or --memory 512M"
            )
        size = float(m.group(1)) * _UNITS[m.group(2).lower()]  # inf for a number of hundreds of digits
        n = math.ceil(size) if math.isfinite(size) else MAX_MEMORY + 1
    if n < 0 or n > MAX_MEMORY:
        raise ValidationError(f"memory {value!r} is out of range; expected 0 to 1P")
    return n


def check_memory(value: str | int | None, what: str = "memory") -> int:
    """``parse_memory``, and none (0) or at least :data:`MIN_MEMORY`: no process runs in less."""
    n = parse_memory(value)
    if 0 < n < MIN_MEMORY:
        raise ValidationError(
            f"{what} {value!r} is {n} bytes; a job needs at least 6M (a number without a unit is bytes: "
            "give one, e.g. 512M or 8G)"
        )
    return n


def format_memory(n: int) -> str:
    """``8G``-style text of a byte count (the largest binary unit that divides it, else bytes)."""
    for unit in ("P", "T", "G", "M", "K"):
        size = _UNITS[unit.lower()]
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def check_cpus(value: object, what: str = "cpus") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what} must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        v = math.inf
    if not math.isfinite(v) or v <= 0 or v > MAX_CPUS:
        raise ValidationError(f"{what} {value!r} is out of range; expected a number above 0 and at most 4096")
    if abs(v * 1000 - round(v * 1000)) > 1e-6:
        raise ValidationError(f"{what} {value!r} is finer than a millicore; use at most three decimals")
    return round(v, 3)


def check_gpus(value: object, what: str = "gpus") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be a whole number, got {type(value).__name__}")
    if not 0 <= value <= MAX_GPUS:
        raise ValidationError(f"{what} {value} is out of range; expected 0 to {MAX_GPUS}")
    return value


def parse_priority(value: str | int) -> int:
    if isinstance(value, str) and value.lower() in PRIORITIES:
        return PRIORITIES[value.lower()]
    names = ", ".join(PRIORITIES)
    raise ValidationError(f"unknown priority {value!r}; expected one of: {names}")


def priority_name(value: int) -> str:
    for name, v in PRIORITIES.items():
        if v == value:
            return name
    return str(value)


def check_command(value: object) -> str:
    if value not in COMMANDS:
        raise ValidationError(f"unknown job command {value!r}; expected one of: {', '.join(COMMANDS)}")
    return str(value)


def check_args(args: Sequence[object] | None) -> list[str]:
    """Extra arguments for the command: passed as argv (never through a shell), bounded."""
    if isinstance(args, str | bytes):  # would be split into its characters
        raise ValidationError("job arguments must be a list of strings, not one string")
    out: list[str] = []
    for arg in args or ():
        if not isinstance(arg, str):
            raise ValidationError(f"job arguments must be strings, got {type(arg).__name__}")
        if "\x00" in arg or len(arg) > MAX_ARG_CHARS:
            raise ValidationError(
                f"job argument {arg[:40]!r}... has a NUL or more than {MAX_ARG_CHARS} chars"
            )
        out.append(arg)
    if len(out) > MAX_ARGS:
        raise ValidationError(f"a job takes at most {MAX_ARGS} extra arguments, got {len(out)}")
    if any(a == "--resume" or a.startswith("--resume=") for a in out):
        raise ValidationError("--resume is added by the worker when a job is retried; leave it out")
    return out


def check_max_retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValidationError(f"max retries {value!r} is out of range; expected a whole number 0 to 100")
    return value


def parse_job_id(value: object) -> int:
    """A job id as ``yard jobs ls`` shows it (a positive integer, optionally written ``job:N``)."""
    text = str(value).strip()
    if text.startswith("job:"):
        text = text[4:]
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses with a bare ValueError.
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,10}", text) or not 0 < int(text) < 2**31:
        raise UsageError(f"{value!r} is not a job id; expected a positive number as `yard jobs ls` shows")
    return int(text)


def job_ref(job_id: int) -> str:
    return f"job:{job_id}"


def read_recipe(path: str | os.PathLike[str]) -> tuple[str, Recipe]:
    """The recipe's YAML text, as the job row stores it, and the recipe it validates to."""
    from modelyard.training._recipe import load_recipe, parse_recipe, parse_yaml

    p = Path(path)
    # Bounded before anything is parsed: a 10 MB recipe took minutes and gigabytes of YAML parsing to
    # be refused. The very bytes read are the ones validated and stored.
    try:
        with p.open("rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except OSError:
        load_recipe(p)  # a missing, unreadable or directory path: load_recipe's clear errors
        raise
    if len(data) > MAX_RECIPE_BYTES:
        raise ValidationError(f"recipe {str(p)!r} has more than 1 MiB; a job recipe may have at most 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"recipe {str(p)!r} is not UTF-8 text") from None
    return text, parse_recipe(parse_yaml(text, source=str(p)), source=str(p))


# -- read model ----------------------------------------------------------------------------------------------
@dataclass
class JobInfo:
    id: int
    project: str
    command: str
    args: list[str]
    recipe_name: str
    backend: str
    status: str
    priority: int
    cpus: float
    gpus: int
    memory: int
    max_retries: int
    attempts: int
    retries: int
    run_id: str | None
    worker: str | None
    submitted_at: datetime
    submitted_by: str
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    reason: str | None
    external_id: str | None = None
    recipe: str = field(default="", repr=False)
    cluster: str | None = None  # a Kubernetes job's API server
    # A SUBMITTED Kubernetes job: why its pod does not run yet, as the cluster said when it was read.
    waiting: str | None = None

    @property
    def priority_name(self) -> str:
        return priority_name(self.priority)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "recipe"}
        out["priority"] = self.priority_name
        out["memory"] = format_memory(self.memory) if self.memory else None
        return out


def _info(job: Job, project: str, waiting: dict[int, str] | None = None) -> JobInfo:
    def ts(value: datetime | None) -> datetime | None:
        return as_utc(value) if value is not None else None

    return JobInfo(
        id=job.id,
        project=project,
        command=job.command,
        args=list(json.loads(job.args)),
        recipe_name=job.recipe_name,
        backend=job.backend,
        status=job.status,
        priority=job.priority,
        cpus=job.cpus,
        gpus=job.gpus,
        memory=job.memory,
        max_retries=job.max_retries,
        attempts=job.attempts,
        retries=job.retries,
        run_id=job.run_id,
        worker=job.worker,
        submitted_at=as_utc(job.submitted_at),
        submitted_by=job.submitted_by,
        started_at=ts(job.started_at),
        heartbeat_at=ts(job.heartbeat_at),
        finished_at=ts(job.finished_at),
        exit_code=job.exit_code,
        reason=job.reason,
        external_id=job.external_id,
        recipe=job.recipe,
        cluster=job.cluster,
        waiting=(waiting or {}).get(job.id) if job.status == "SUBMITTED" else None,
    )


def _job_row(s: Session, ctx: Context, job_id: int, *, lock: bool = False) -> Job:
    # Another project's job reads as "not found": existence is not leaked across tenants.
    stmt = select(Job).where(Job.id == job_id, Job.project_id == ctx.project_id)
    if lock:
        stmt = stmt.with_for_update()
    job = s.execute(stmt).scalar_one_or_none()
    if job is None:
        raise NotFoundError(
            f"job {job_id} not found in project {ctx.project!r}; list jobs with `yard jobs ls`"
        )
    return job


# -- submit, list, show, cancel ------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRequest:
    """A validated submission (what ``submit_job`` and the Kubernetes manifest are built from)."""

    command: str
    recipe: str
    recipe_name: str
    args: list[str]
    cpus: float
    gpus: int
    memory: int
    priority: int
    max_retries: int


def job_request(
    platform: Platform,
    recipe: str | os.PathLike[str],
    *,
    command: str = "train",
    args: Sequence[str] | None = None,
    cpus: float = 1.0,
    gpus: int = 0,
    memory: str | int | None = None,
    priority: str = "normal",
    max_retries: int | None = None,
) -> JobRequest:
    """Check every input of a submission; a :class:`~modelyard.errors.UsageError` names the bad one."""
    cmd = check_command(command)
    text, _ = read_recipe(recipe)
    return JobRequest(
        command=cmd,
        args=check_args(args),
        cpus=check_cpus(cpus),
        gpus=check_gpus(gpus),
        memory=check_memory(memory),
        priority=parse_priority(priority),
        max_retries=check_max_retries(
            platform.settings.job_max_retries if max_retries is None else max_retries
        ),
        recipe=text,
        recipe_name=Path(recipe).name[:256],
    )


def submit_job(
    platform: Platform,
    ctx: Context,
    recipe: str | os.PathLike[str],
    *,
    command: str = "train",
    args: Sequence[str] | None = None,
    cpus: float = 1.0,
    gpus: int = 0,
    memory: str | int | None = None,
    priority: str = "normal",
    max_retries: int | None = None,
) -> JobInfo:
    """Queue ``command`` of the recipe at ``recipe``; returns the QUEUED job. Nothing is queued on error."""
    request = {
        "command": command,
        "args": args,
        "cpus": cpus,
        "gpus": gpus,
        "memory": memory,
        "priority": priority,
        "max_retries": max_retries,
    }
    req = _checked_request(platform, ctx, recipe, request)
    return _insert_job(platform, ctx, req, backend="local", status="QUEUED")


def _checked_request(
    platform: Platform,
    ctx: Context,
    recipe: str | os.PathLike[str],
    request: dict[str, Any],
    check: Callable[[JobRequest], object] | None = None,
    *,
    audited: bool = True,
) -> JobRequest:
    """Authorize, then check the submission, its data and (``check``) anything else. A bad one is refused,
    audited unless ``audited`` is false (a preview is not a mutation), and queues nothing."""
    resource = f"project:{ctx.project}"
    platform.authorize(ctx, "job.write", resource)
    try:
        req = job_request(platform, recipe, **request)
        check_recipe_data(platform, ctx, req)
        if check is not None:
            check(req)
    except (UsageError, NotFoundError) as exc:
        if not audited:
            raise
        raise platform.refuse(ctx, "job.write", resource, exc) from None
    return req


def submit_kubernetes_job(
    platform: Platform,
    ctx: Context,
    recipe: str | os.PathLike[str],
    *,
    image: str | None = None,
    namespace: str = "default",
    secret_name: str = "modelyard",  # noqa: S107 (the name of a Kubernetes Secret, not a value)
    database_url: str | None = None,
    artifact_uri: str | None = None,
    dry_run: bool = False,
    **request: Any,
) -> tuple[dict[str, Any], JobInfo | None]:
    """The Kubernetes Job manifest of a submission (``request``: the options of :func:`job_request`). With
    ``dry_run`` nothing is recorded or applied (the manifest is for kubectl); otherwise a SUBMITTED job row
    is recorded and the manifest, which then carries ``YARD_JOB_ID``, is applied with the kubernetes client
    in the same transaction, so a refusal from the cluster records nothing."""
    from modelyard.training import _k8s

    options: dict[str, Any] = {
        "image": image,
        "namespace": namespace,
        "secret_name": secret_name,
        "database_url": database_url,
        "artifact_uri": artifact_uri,
    }
    req = _checked_request(
        platform,
        ctx,
        recipe,
        request,
        lambda r: _k8s.job_manifest(platform, ctx, r, **options),  # checks every option
        audited=not dry_run,
    )
    if not req.memory:  # recorded, so `show` says what the pod is limited to and its worker holds it there
        req = dataclasses.replace(req, memory=_k8s.default_memory(req.cpus))
    if dry_run:
        return _k8s.job_manifest(platform, ctx, req, **options), None
    applied: dict[str, Any] = {}

    def apply(job_id: int) -> _k8s.Submitted:
        applied.update(_k8s.job_manifest(platform, ctx, req, job_id=job_id, **options))
        return _k8s.apply_manifest(applied)

    # No column holds it (the row's memory is the job's own limit): the audit record says what /work had.
    work_disk = {"work_disk": platform.settings.job_work_disk}
    info = _insert_job(
        platform, ctx, req, backend="kubernetes", status="SUBMITTED", external=apply, detail=work_disk
    )
    return applied, info


def check_recipe_data(platform: Platform, ctx: Context, req: JobRequest) -> None:
    """Every dataset version the recipe reads exists, and a local model.pretrained of a train or tune job
    is loadable (a job that could only fail is not queued)."""
    from modelyard.training._model import check_pretrained
    from modelyard.training._recipe import check_data, parse_recipe, parse_yaml

    recipe = parse_recipe(parse_yaml(req.recipe, source=req.recipe_name, stored=True), source=req.recipe_name)
    check_data(platform, ctx, recipe)
    if req.command in ("train", "tune"):  # eval reads a run's or a given model, not model.pretrained
        check_pretrained(recipe)


def _insert_job(
    platform: Platform,
    ctx: Context,
    req: JobRequest,
    *,
    backend: str,
    status: str,
    external: Callable[[int], Any] | None = None,  # -> _k8s.Submitted
    detail: dict[str, Any] | None = None,
) -> JobInfo:
    """Insert the row and its audit record (with ``detail``) in one transaction. ``external`` (given the new
    id) hands the job to another system inside that transaction, so a failure there queues nothing."""
    detail = {
        **(detail or {}),
        "command": req.command,
        "recipe": req.recipe_name,
        "backend": backend,
        "priority": priority_name(req.priority),
        "cpus": req.cpus,
        "gpus": req.gpus,
        "memory": req.memory,
    }
    try:
        with platform.db.write() as s:
            platform.recheck(s, ctx, "job.write")  # a long-lived client whose role or token is gone since
            job = Job(
                project_id=ctx.project_id,
                command=req.command,
                args=json.dumps(req.args),
                recipe=req.recipe,
                recipe_name=req.recipe_name,
                backend=backend,
                status=status,
                priority=req.priority,
                cpus=req.cpus,
                gpus=req.gpus,
                memory=req.memory,
                max_retries=req.max_retries,
                attempts=0,
                retries=0,
                submitted_at=platform.db.now(),  # one clock for every submitter: aging compares these
                submitted_by=ctx.user,
            )
            s.add(job)
            s.flush()
            if external is not None:
                sub = external(job.id)
                job.external_id, job.cluster, job.cluster_uid = sub.external_id, sub.cluster, sub.uid
                detail.update(external_id=job.external_id, cluster=job.cluster, cluster_uid=job.cluster_uid)
            platform.audit(ctx, "job.write", job_ref(job.id), "ok", detail, session=s)
            info = _info(job, ctx.project)
    except Exception as exc:  # as platform.mutate records one; not mutate: the record names the new id
        platform.record_failure(ctx, "job.write", "job:new", exc, detail)
        raise
    return info


def list_jobs(
    platform: Platform,
    ctx: Context,
    *,
    statuses: Sequence[str] | None = None,
    limit: int = 100,
) -> list[JobInfo]:
    """Jobs of ctx's project, newest first (stale RUNNING jobs are re-queued or failed first)."""
    platform.authorize(ctx, "job.read", f"project:{ctx.project}")
    wanted = [s.upper() for s in statuses or ()]
    bad = [s for s in wanted if s not in STATUSES]
    if bad:
        raise UsageError(f"unknown job status {bad[0]!r}; expected some of: {', '.join(STATUSES)}")
    if not 0 < limit <= 100_000:
        raise UsageError(f"limit {limit} is out of range; expected 1 to 100000")
    reap_stale_jobs(platform, ctx)
    waiting = sync_cluster_jobs(platform, ctx)
    with platform.db.read() as s:
        stmt = select(Job).where(Job.project_id == ctx.project_id)
        if wanted:
            stmt = stmt.where(Job.status.in_(wanted))
        rows = s.scalars(stmt.order_by(Job.id.desc()).limit(limit)).all()
        return [_info(j, ctx.project, waiting) for j in rows]


def get_job(platform: Platform, ctx: Context, job_id: int | str) -> JobInfo:
    jid = parse_job_id(job_id)
    platform.authorize(ctx, "job.read", job_ref(jid))
    reap_stale_jobs(platform, ctx)
    waiting = sync_cluster_jobs(platform, ctx, jid)
    with platform.db.read() as s:
        return _info(_job_row(s, ctx, jid), ctx.project, waiting)


def cancel_job(platform: Platform, ctx: Context, job_id: int | str) -> JobInfo:
    """Mark a QUEUED, RUNNING or SUBMITTED job CANCELLED. Its worker notices on its next poll and stops the
    process (SIGTERM, then SIGKILL after the grace period); a Kubernetes job is deleted from its cluster.
    Your own jobs need ``job.cancel``; anyone else's ``job.cancel.any``.

    A Kubernetes job is cancelled in the store first: the row is what its pod obeys (a pod that starts finds
    the job CANCELLED and runs nothing, a running one stops it), so a cluster that cannot be reached does not
    undo the cancel. Its Job is then deleted; where that fails, the reason says the Job is not deleted yet
    and the next ``ls``, ``show`` or ``cancel`` that reaches the cluster deletes it."""
    jid = parse_job_id(job_id)
    resource = job_ref(jid)
    platform.authorize(ctx, "job.cancel", resource)
    owner = _owner(platform, ctx, jid, "job.cancel")
    action = "job.cancel" if owner == ctx.user else "job.cancel.any"
    platform.authorize(ctx, action, resource)
    with platform.mutate(ctx, action, resource, {"owner": owner}) as s:
        job = _job_row(s, ctx, jid, lock=True)
        if job.status in TERMINAL and not _delete_pending(job.reason):
            raise UsageError(
                f"job {jid} already {job.status}; only QUEUED, SUBMITTED or RUNNING jobs can be cancelled"
            )
        if job.status not in TERMINAL:
            was = job.status
            job.status, job.finished_at = "CANCELLED", utcnow()
            job.reason = f"cancelled by {ctx.user} while {was}"
            if job.backend == "kubernetes" and job.external_id:
                # Noted before the delete is tried: a cancel that dies in between still gets it done.
                job.reason += _not_deleted(job.external_id)
    delete_cancelled_jobs(platform, ctx, jid)  # a second cancel retries a delete that failed
    with platform.db.read() as s:
        return _info(_job_row(s, ctx, jid), ctx.project)


# The end of a cancelled Kubernetes job's reason while its Job is not deleted from the cluster yet.
_NOT_DELETED = " is not deleted yet"


def _not_deleted(external_id: str, why: str = "") -> str:
    return f"; Kubernetes job {external_id}{_NOT_DELETED}" + (f": {why}" if why else "")


def _delete_pending(reason: str | None) -> bool:
    return reason is not None and _NOT_DELETED in reason


def cancel_pending(job: JobInfo) -> bool:
    """Whether a cancelled Kubernetes job's Job is not deleted from its cluster yet."""
    return job.backend == "kubernetes" and job.status == "CANCELLED" and _delete_pending(job.reason)


def delete_cancelled_jobs(platform: Platform, ctx: Context, job_id: int | None = None) -> None:
    """Delete from their cluster the Jobs of ctx's cancelled Kubernetes jobs that are not deleted yet (the
    cluster could not be reached, or a cancel died before it asked). A delete that fails again keeps its
    note, with why, and the rest of that cluster's wait for the next call: a dead cluster costs one try."""
    cond = [
        Job.project_id == ctx.project_id,
        Job.backend == "kubernetes",
        Job.status == "CANCELLED",
        Job.reason.contains(_NOT_DELETED, autoescape=True),
        Job.external_id.is_not(None),
    ]
    if job_id is not None:
        cond.append(Job.id == job_id)
    with platform.db.read() as s:
        rows = s.execute(
            select(Job.id, Job.external_id, Job.cluster_uid, Job.cluster, Job.reason).where(*cond)
        ).all()
    if not rows:
        return
    from modelyard.training._k8s import delete_job

    failed: set[str | None] = set()
    for jid, external_id, uid, cluster, reason in rows:
        if cluster in failed:
            continue
        ext = str(external_id)
        base = str(reason).partition(f"; Kubernetes job {ext}{_NOT_DELETED}")[0]
        try:
            delete_job(ext, uid, cluster)
        except YardError as exc:
            failed.add(cluster)
            log.warning("could not delete Kubernetes job %s of cancelled job %d: %s", ext, jid, exc.message)
            new, entries = base + _not_deleted(ext, exc.message), []
        else:  # the cancel's last step, done by whoever reached the cluster: the reaper's, as in sync
            detail = {"status": "CANCELLED", "cluster": "deleted", "via": ctx.user}
            new, entries = base, [_reaper_entry(ctx.project, jid, detail)]
        with platform.db.write() as s:
            # Only the note as it was read: another reader that deleted it meanwhile wins.
            done = s.execute(
                update(Job)
                .where(Job.id == jid, Job.status == "CANCELLED", Job.reason == reason)
                .values(reason=new)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if done:
                _audit.append_many(s, entries)


def _owner(platform: Platform, ctx: Context, jid: int, action: str) -> str:
    """Who submitted job ``jid`` (which decides the action to check); a job that is not there is refused
    and audited, as a mutation of it would be."""
    try:
        with platform.db.read() as s:
            return _job_row(s, ctx, jid).submitted_by
    except NotFoundError as exc:
        raise platform.refuse(ctx, action, job_ref(jid), exc) from None


def attach_run(platform: Platform, ctx: Context, job_id: int | str, run_id: str) -> None:
    """Record the tracking run a job's process created (``yard train`` calls this with ``YARD_JOB_ID``), so a
    retry after a worker died resumes that run from its last checkpoint. Your own job needs ``job.write``;
    anyone else's ``worker.run``, the role of the worker (or pod) whose process runs it: a scientist must not
    make a colleague's retried job resume a run of theirs."""
    jid = parse_job_id(job_id)
    resource = job_ref(jid)
    platform.authorize(ctx, "job.write", resource)
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        bad = UsageError(f"{run_id!r} is not a run id; expected 32 lower-case hex characters")
        raise platform.refuse(ctx, "job.write", resource, bad)
    owner = _owner(platform, ctx, jid, "job.write")
    action = "job.write" if owner == ctx.user else "worker.run"
    with platform.mutate(ctx, action, resource, {"run": run_id, "owner": owner}) as s:
        job = _job_row(s, ctx, jid, lock=True)
        if job.status not in ("RUNNING", "SUBMITTED"):
            raise UsageError(
                f"job {jid} is {job.status}, not running; a run can be attached only while it runs"
            )
        if (
            s.execute(select(Run.id).where(Run.id == run_id, Run.project_id == ctx.project_id)).first()
            is None
        ):
            raise NotFoundError(f"run {run_id} not found in project {ctx.project!r}")
        job.run_id = run_id


def job_id_from_env() -> int | None:
    """The id of the job this process runs for (``YARD_JOB_ID``, set by the worker), or None."""
    value = os.environ.get("YARD_JOB_ID")
    return parse_job_id(value) if value else None


# -- logs ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogChunk:
    id: int
    attempt: int
    data: str


def read_logs(
    platform: Platform, ctx: Context, job_id: int | str, *, after: int = 0, limit: int = 1000
) -> tuple[list[LogChunk], JobInfo]:
    """Log chunks of a job with id above ``after`` and the job's status read *before* them: when that status
    is final, the chunks returned are the whole rest of the log (the worker writes them before finishing)."""
    jid = parse_job_id(job_id)
    platform.authorize(ctx, "job.read", job_ref(jid))
    with platform.db.read() as s:
        info = _info(_job_row(s, ctx, jid), ctx.project)
    with platform.db.read() as s:
        rows = s.execute(
            select(JobLog.id, JobLog.attempt, JobLog.data)
            .where(JobLog.job_id == jid, JobLog.id > after)
            .order_by(JobLog.id)
            .limit(limit)
        ).all()
    return [LogChunk(i, a, d) for i, a, d in rows], info


def iter_logs(
    platform: Platform,
    ctx: Context,
    job_id: int | str,
    *,
    follow: bool = False,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> Iterator[LogChunk]:
    """Every log chunk of a job in order; with ``follow``, keep polling until the job is final and every
    chunk was read (or ``timeout_s`` passes)."""
    after, page = 0, 1000
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    next_sync = 0.0
    while True:
        chunks, info = read_logs(platform, ctx, job_id, after=after, limit=page)
        yield from chunks
        if chunks:
            after = chunks[-1].id
        if len(chunks) == page:
            continue  # more already stored
        # The status was read before the chunks: final then means every chunk has been read now (a
        # Kubernetes job's pod stores its output the same way, through `yard worker --job`).
        if not follow or info.status in TERMINAL:
            return
        if deadline is not None and time.monotonic() > deadline:
            return
        reap_stale_jobs(platform, ctx)  # a dead worker's job goes back to the queue (or fails) meanwhile
        if info.status == "SUBMITTED" and info.backend == "kubernetes" and time.monotonic() >= next_sync:
            sync_cluster_jobs(platform, ctx, info.id)  # a Job the cluster gave up on ends FAILED
            next_sync = time.monotonic() + CLUSTER_POLL_S
        time.sleep(poll_s)


# -- the reaper ----------------------------------------------------------------------------------------------
def reap_stale_jobs(platform: Platform, ctx: Context | None = None) -> list[tuple[int, str]]:
    """Re-queue RUNNING jobs whose heartbeat is older than ``job_heartbeat_timeout_s`` (their worker died or
    lost the store) with ``retries`` + 1, or mark them FAILED once retries exceed ``max_retries``. One audit
    record each (actor ``system:reaper``). Returns (job id, new status). Cheap when nothing is stale."""
    timeout = platform.settings.job_heartbeat_timeout_s
    now = platform.db.now()
    # Judged by the timeout of the job's worker (stale_at, set with each heartbeat), not this reaper's: a
    # reader set to a shorter one re-queued live jobs. A row from before stale_at: by this reaper's.
    older = or_(Job.heartbeat_at < now - timedelta(seconds=timeout), Job.heartbeat_at.is_(None))
    cond = [Job.status == "RUNNING", or_(Job.stale_at < now, and_(Job.stale_at.is_(None), older))]
    if ctx is not None:
        cond.append(Job.project_id == ctx.project_id)
    with platform.db.read() as s:
        if s.execute(select(Job.id).where(*cond).limit(1)).first() is None:
            return []
    reason = "no heartbeat within its worker's timeout: the worker died or lost the store"
    out: list[tuple[int, str]] = []
    with platform.db.write() as s:
        # Locked rows (a worker heartbeating or finishing right now) are skipped: the next pass sees them.
        stale = s.scalars(select(Job).where(*cond).order_by(Job.id).with_for_update(skip_locked=True)).all()
        if not stale:
            return []
        projects = dict(
            s.execute(
                select(Project.id, Project.name).where(Project.id.in_({j.project_id for j in stale}))
            ).all()
        )
        entries = []
        for job in stale:
            worker = job.worker
            if job.backend == "kubernetes":
                _reap_pod(job, reason)
                counted = {"attempts": job.attempts}
            else:
                job.retries += 1
                if job.retries > job.max_retries:
                    job.status, job.finished_at = "FAILED", utcnow()
                    job.reason = f"{reason}; gave up after {job.retries} retries (max {job.max_retries})"
                else:
                    job.status, job.worker, job.heartbeat_at = "QUEUED", None, None
                    job.reason = f"{reason}; re-queued (retry {job.retries} of {job.max_retries})"
                counted = {"retries": job.retries}
            out.append((job.id, job.status))
            detail = {"status": job.status, "worker": worker, **counted}
            entries.append(_reaper_entry(projects[job.project_id], job.id, detail))
        _audit.append_many(s, entries)
    return out


def sync_cluster_jobs(platform: Platform, ctx: Context, job_id: int | None = None) -> dict[int, str]:
    """Ask the cluster about the SUBMITTED Kubernetes jobs of ctx's project (or only ``job_id``). A job whose
    pod never reported back ends FAILED when the cluster has given up on it: its Job failed (backoff limit,
    deadline: pods that crashed before ``yard worker`` reached the store), completed without the pod
    recording a result, or is gone (deleted outside modelyard, or by its TTL). One audit record each (actor
    ``system:reaper``). Returns, for jobs still waiting, why their pod does not run (image pull, scheduling).
    Without a Kubernetes client or configuration, or when the cluster does not answer, it logs a warning
    and changes nothing: the rows stay SUBMITTED until a machine that can ask does."""
    delete_cancelled_jobs(platform, ctx, job_id)
    cond = [Job.project_id == ctx.project_id, Job.backend == "kubernetes", Job.status == "SUBMITTED"]
    if job_id is not None:
        cond.append(Job.id == job_id)
    with platform.db.read() as s:
        # Read before the cluster is asked: a row committed means its Job was created (submit applies the
        # manifest inside the inserting transaction), so a Job missing from the cluster's list is gone.
        seen: dict[int, tuple[str, str | None, str | None, int]] = {
            jid: (str(ext), cluster, uid, attempts)
            for jid, ext, cluster, uid, attempts in s.execute(
                select(Job.id, Job.external_id, Job.cluster, Job.cluster_uid, Job.attempts).where(
                    *cond, Job.external_id.is_not(None)
                )
            ).all()
        }
    if not seen:
        return {}
    from modelyard.training import _k8s

    try:
        cluster = _k8s.cluster_jobs({jid: _k8s.Submitted(*row[:3]) for jid, row in seen.items()})
    except YardError as exc:
        log.warning("could not ask Kubernetes about %d submitted job(s): %s", len(seen), exc)
        return {}
    waiting: dict[int, str] = {}
    ended: dict[int, str] = {}
    for jid, state in cluster.items():
        ext = seen[jid][0]
        if state.state in ("active", "elsewhere"):
            if state.detail:
                waiting[jid] = state.detail
        elif state.state == "failed":
            ended[jid] = f"Kubernetes job {ext} failed: {state.detail}"
        elif state.state == "complete":
            ended[jid] = f"Kubernetes job {ext} completed, but its pod did not record a result in the store"
        else:
            ended[jid] = (
                f"Kubernetes job {ext} no longer exists (deleted, or removed after it finished"
                + (f"; {state.detail}" if state.detail else "")
                + ") and its last attempt did not report back"
            )
    if not ended:
        return waiting
    with platform.db.write() as s:
        # Only rows unchanged since they were read: a pod that claimed its job meanwhile wins.
        rows = s.scalars(select(Job).where(Job.id.in_(ended), *cond).with_for_update()).all()
        entries = []
        for job in rows:
            if (job.external_id, job.cluster, job.cluster_uid, job.attempts) != seen[job.id]:
                continue
            job.status, job.finished_at, job.reason = "FAILED", utcnow(), ended[job.id]
            detail = {"status": "FAILED", "cluster": cluster[job.id].state}
            entries.append(_reaper_entry(ctx.project, job.id, detail))
        _audit.append_many(s, entries)
    return waiting


def _reaper_entry(project: str, job_id: int, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "actor": REAPER,
        "project": project,
        "action": "job.write",
        "resource": job_ref(job_id),
        "outcome": "ok",
        "detail": detail,
    }


def _cluster_retries(job: Job | JobInfo) -> bool:
    """Whether the cluster runs a Kubernetes job again after its latest attempt failed: backoffLimit is
    max_retries, so it makes max_retries + 1 attempts in all."""
    return job.attempts <= job.max_retries


def _reap_pod(job: Job, reason: str) -> None:
    """A Kubernetes job whose pod went silent (node lost, pod evicted or OOM-killed with its worker): the
    cluster, not a worker, runs the next attempt (backoffLimit = max_retries), so it goes back to SUBMITTED,
    or FAILED once that was its last attempt. The reason names the pod for `kubectl describe`."""
    pod = f"pod {job.worker}" if job.worker else "its pod"
    if not _cluster_retries(job):
        job.status, job.finished_at = "FAILED", utcnow()
        job.reason = f"{reason} ({pod}); that was its last attempt (max retries {job.max_retries})"
    else:
        job.status, job.heartbeat_at = "SUBMITTED", None
        job.reason = f"{reason} ({pod}); the cluster runs it again if the pod failed"
    job.worker = None


# -- the worker ----------------------------------------------------------------------------------------------
# Argv of a job's process, given the job and the private file its recipe was written to.
Executor = Callable[[JobInfo, Path], list[str]]


def cli_argv(job: JobInfo, recipe_file: Path) -> list[str]:
    """``python -m modelyard.cli <command> <recipe file> [args]``; a retried ``train`` job with a run resumes
    it (``--resume RUN``) from its last checkpoint, a retried ``tune`` job takes its study over."""
    argv = [sys.executable, "-m", "modelyard.cli", job.command, str(recipe_file), *job.args]
    if job.command == "train" and job.run_id:
        argv += ["--resume", job.run_id]
    if job.command == "tune" and job.attempts > 1 and "--worker" not in job.args:
        argv.append("--resume")
    return argv


# Runs the job's argv with PR_SET_PDEATHSIG(SIGKILL) (Linux): when the worker dies, even by SIGKILL, the
# kernel kills the job, so a retry never runs beside an orphan of the dead worker. An inline `-c` so that
# the shim imports nothing of modelyard; the signal survives execv (it is cleared only for set-uid
# programs). It checks its parent is still the worker after arming, closing the race with an early death.
_SHIM = (
    "import os,sys,ctypes,signal\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(137)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _runnable(text: str, name: str) -> str:
    """The job's recipe as `yard train` will read it. A job queued before a key given twice was refused
    (2026-12-06) is rewritten as it was read then (the last value wins), rather than failing when it runs."""
    import yaml

    from modelyard.training._recipe import parse_yaml

    try:
        parse_yaml(text, source=name)
    except ValidationError as exc:
        if "is given twice" not in exc.message:
            return text  # `yard train` says what is wrong with it
        return yaml.safe_dump(parse_yaml(text, source=name, stored=True), sort_keys=False)
    return text


def detect_gpus() -> list[str]:
    """GPU ids this machine offers: CUDA_VISIBLE_DEVICES if set, else ``nvidia-smi -L``; none without."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # an id listed twice is one GPU, offered once
        return list(dict.fromkeys(d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


@dataclass
class _Running:
    job: JobInfo
    attempt: int
    proc: subprocess.Popen[bytes]
    tmpdir: Path
    gpu_ids: list[str]
    reader: threading.Thread
    pending: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    logged: int = 0
    term_at: float | None = None  # monotonic time SIGTERM was sent
    lost: str | None = None  # why the job is no longer ours (cancelled, re-queued)
    over_memory: int | None = None  # bytes in use when it was killed for exceeding its memory request


class Worker:
    """Claims and runs jobs of ctx's project while their resources fit its CPUs, GPUs and memory.

    ``executor`` builds a job's argv (default :func:`cli_argv`); tests pass a trivial one. ``max_jobs`` stops
    after that many claims; ``exit_when_idle`` stops once nothing runs and nothing claimable is queued.

    ``job``: the pod of a Kubernetes job (``yard worker --job ID``). The worker runs that one job with the
    resources it asked for (the pod was scheduled for them), copies its output to ``echo`` as well (for
    ``kubectl logs``), records a failed attempt with retries left as SUBMITTED (the cluster runs the next
    one) and keeps the job's exit status in ``exit_code``. Running your own job needs ``job.write``;
    anyone else's ``worker.run``."""

    def __init__(
        self,
        platform: Platform,
        ctx: Context,
        *,
        cpus: float | None = None,
        gpus: int | None = None,
        memory: str | int | None = None,
        name: str | None = None,
        executor: Executor | None = None,
        max_jobs: int | None = None,
        exit_when_idle: bool = False,
        log: Callable[[str], None] | None = None,
        job: int | str | None = None,
        echo: Callable[[bytes], None] | None = None,
    ) -> None:
        self.job_id = parse_job_id(job) if job is not None else None
        self.action = "worker.run"
        if self.job_id is None:
            platform.authorize(ctx, "worker.run", f"project:{ctx.project}")
        else:
            options = {"--cpus": cpus, "--gpus": gpus, "--memory": memory, "--max-jobs": max_jobs}
            given = [option for option, value in options.items() if value is not None]
            if given:
                raise UsageError(
                    f"a worker for one job (--job) runs it with the resources it asked for: drop {given[0]}"
                )
            assigned = self._assigned_job(platform, ctx, self.job_id)
            cpus, gpus, memory = assigned.cpus, assigned.gpus, assigned.memory or None
            max_jobs, exit_when_idle = 1, True
        st = platform.settings
        if st.job_heartbeat_s * HEARTBEATS_PER_TIMEOUT > st.job_heartbeat_timeout_s:
            # Its own reaper (and any other with that timeout) would re-queue its live jobs, again and again.
            raise ValidationError(
                f"YARD_JOB_HEARTBEAT_S {st.job_heartbeat_s:g} is too long for YARD_JOB_HEARTBEAT_TIMEOUT_S "
                f"{st.job_heartbeat_timeout_s:g}: a worker heartbeats at least {HEARTBEATS_PER_TIMEOUT} "
                "times per timeout (a beat can be late by a tick or a slow store); shorten the one or raise "
                "the other"
            )
        self.platform, self.ctx = platform, ctx
        self.cpus = check_cpus(float(cpus if cpus is not None else (os.cpu_count() or 1)), "worker cpus")
        found = detect_gpus()
        n_gpus = check_gpus(len(found) if gpus is None else gpus, "worker gpus")
        if found and n_gpus > len(found):  # made-up ids would repeat or name GPUs hidden from this worker
            raise ValidationError(
                f"worker gpus {n_gpus}: this machine shows {len(found)} GPU(s) ({', '.join(found)}, from "
                "CUDA_VISIBLE_DEVICES or nvidia-smi); offer at most that many"
            )
        # Without any GPU detected (no nvidia-smi), the ids offered are 0..n-1.
        self.gpu_ids = found[:n_gpus] if found else [str(i) for i in range(n_gpus)]
        self.memory = check_memory(memory, "worker memory") if memory is not None else total_memory()
        if self.memory <= 0:
            raise ValidationError("worker memory must be above 0")
        self.name = (name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")[:256]
        self.executor = executor or cli_argv
        if max_jobs is not None and max_jobs < 1:
            raise ValidationError(f"max jobs {max_jobs} must be at least 1")
        self.max_jobs = max_jobs
        self.exit_when_idle = exit_when_idle
        self.claimed = 0
        self.running: dict[int, _Running] = {}
        self.finished: deque[tuple[int, str]] = deque(maxlen=1000)  # (job, final status), the latest
        self.exit_code: int | None = None  # of the last job that ended here (see _collect)
        self._said_waiting = False
        self._said_too_big: set[int] = set()  # queued jobs this worker said it can never run
        self._echo = echo
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop() and when a job's output ends (it is exiting)
        self._log = log or (lambda _msg: None)

    def _assigned_job(self, platform: Platform, ctx: Context, job_id: int) -> Job:
        resource = job_ref(job_id)
        platform.authorize(ctx, "job.read", resource)
        with platform.db.read() as s:
            job = _job_row(s, ctx, job_id)
        if job.backend != "kubernetes":
            raise UsageError(
                f"job {job_id} is a {job.backend} job: workers claim it from the queue (`yard worker`); "
                "--job is what a Kubernetes job's pod runs"
            )
        if job.submitted_by != ctx.user:
            platform.authorize(ctx, "worker.run", resource)  # someone else's job: an operator's role
        else:
            platform.authorize(ctx, "job.write", resource)
            self.action = "job.write"
        return job

    # -- control ---------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop claiming; running jobs are stopped and handed back to the queue (not counted as retries)."""
        self._stop.set()
        self._wake.set()

    @property
    def free(self) -> tuple[float, int, int]:
        jobs = [r.job for r in self.running.values()]
        return (
            round(self.cpus - sum(j.cpus for j in jobs), 3),
            len(self.gpu_ids) - sum(j.gpus for j in jobs),
            self.memory - sum(j.memory for j in jobs),
        )

    def run(self) -> int:
        """The worker loop; returns the number of jobs it claimed."""
        s = self.platform.settings
        tick = min(s.job_poll_s, s.job_heartbeat_s, 0.5)
        last_beat = last_reap = 0.0
        outage: float | None = None  # since when the store has been failing
        try:
            while True:
                self._wake.clear()  # before looking: a job ending from here on cuts the next wait short
                now = time.monotonic()
                claimed_now = 0
                try:
                    self._pump_logs()
                    self._collect()
                    if now - last_beat >= s.job_heartbeat_s:
                        self._heartbeat()
                        last_beat = now
                    self._check_lost()
                    if now - last_reap >= min(s.job_heartbeat_s, s.job_heartbeat_timeout_s / 2):
                        reap_stale_jobs(self.platform, self.ctx)
                        last_reap = now
                    stopping = self._stop.is_set() or (
                        self.max_jobs is not None and self.claimed >= self.max_jobs
                    )
                    while not stopping and self._claim_one():
                        claimed_now += 1
                        stopping = self.max_jobs is not None and self.claimed >= self.max_jobs
                    if claimed_now == 0 and self.job_id is None:
                        self._say_too_big()
                    if not self.running:
                        if stopping:
                            return self.claimed
                        if self.exit_when_idle and claimed_now == 0 and self._nothing_to_wait_for():
                            return self.claimed
                    if outage is not None:
                        self._log(f"worker {self.name}: the store answers again")
                        outage = None
                except BackendError as exc:
                    # The store is down or unreachable: jobs keep running and their output is kept in
                    # memory. Past the heartbeat timeout other workers may re-queue them; when the store
                    # answers again _check_lost sees that and stops them here.
                    if outage is None:
                        outage = now
                        self._log(f"worker {self.name}: store error, retrying: {exc.message}")
                self._enforce_memory()
                self._escalate()
                if self._stop.is_set():
                    self._shutdown_running()
                if claimed_now == 0:
                    self._wake.wait(tick if self.running or outage is not None else s.job_poll_s)
        finally:
            self._shutdown_running(wait=True)

    def _shutdown_running(self, wait: bool = False) -> None:
        """Send SIGTERM to every running job; with ``wait``, also escalate to SIGKILL after the grace period
        and hand the jobs back (storing their last output). Never leaves a child process behind."""
        for entry in self.running.values():
            self._terminate(entry)
        if not wait or not self.running:
            return
        self._stop.set()
        settings = self.platform.settings
        deadline = time.monotonic() + settings.job_kill_grace_s + 30
        last_beat = 0.0
        try:
            while self.running and time.monotonic() < deadline:
                # The jobs are still ours while they wind down (the grace may outlast the heartbeat
                # timeout): without a heartbeat a reaper would re-queue them as lost, a retry counted.
                if time.monotonic() - last_beat >= settings.job_heartbeat_s:
                    with contextlib.suppress(BackendError):  # the store failing may be why the loop ended
                        self._heartbeat()
                    last_beat = time.monotonic()
                self._escalate()
                self._collect()
                if self.running:
                    time.sleep(0.05)
        finally:
            for entry in self.running.values():  # the store failed: at least stop the processes
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(entry.proc.pid, signal.SIGKILL)
                entry.proc.wait()
                shutil.rmtree(entry.tmpdir, ignore_errors=True)

    # -- claiming --------------------------------------------------------------------------------------------
    def _queue_filter(self) -> list[Any]:
        if self.job_id is not None:
            # This pod's job, once SUBMITTED: a job still RUNNING in a pod that died is handed back by the
            # reaper this worker runs while it waits, never taken from a pod that may be alive.
            return [
                Job.id == self.job_id,
                Job.project_id == self.ctx.project_id,
                Job.backend == "kubernetes",
                Job.status == "SUBMITTED",
            ]
        return [
            Job.project_id == self.ctx.project_id,
            Job.status == "QUEUED",
            Job.backend == "local",
            Job.cpus <= self.cpus,
            Job.gpus <= len(self.gpu_ids),
            Job.memory <= self.memory,
        ]

    def _queue_order(self) -> list[Any]:
        st = self.platform.settings
        if not st.job_aging_s:
            return [Job.priority.desc(), Job.id]
        # Aging: priority p queued at t ranks at p + LEVEL * (now - t) / aging, capped at the limit (a job
        # already above it keeps its own). Ties, such as jobs aged up to the limit, go oldest first. One
        # clock, the store's, for "now" and for every submitted_at.
        clock = self.platform.db.now()
        if self.platform.db.dialect == "postgresql":
            submitted: Any = func.extract("epoch", Job.submitted_at)
            now: Any = func.extract("epoch", clock)
        else:  # SQLite keeps UTC as text that julianday() reads; 2440587.5 is 1970-01-01
            submitted = (func.julianday(Job.submitted_at) - 2_440_587.5) * 86_400.0
            now = literal(clock.timestamp())
        limit = PRIORITIES[st.job_aging_limit]
        aged = Job.priority + (now - submitted) * (PRIORITY_LEVEL / st.job_aging_s)
        rank = case((Job.priority >= limit, Job.priority), (aged >= limit, limit), else_=aged)
        return [rank.desc(), Job.submitted_at, Job.id]

    def _say_too_big(self) -> None:
        """Name, once, each queued job that asks for more than this worker has (it would wait silently)."""
        with self.platform.db.read() as s:
            jobs = s.execute(
                select(Job.id, Job.cpus, Job.gpus, Job.memory).where(
                    Job.project_id == self.ctx.project_id,
                    Job.status == "QUEUED",
                    Job.backend == "local",
                    (Job.cpus > self.cpus) | (Job.gpus > len(self.gpu_ids)) | (Job.memory > self.memory),
                )
            ).all()
        for job_id, cpus, gpus, memory in jobs:
            if job_id not in self._said_too_big:
                self._said_too_big.add(job_id)
                self._log(
                    f"worker {self.name}: job {job_id} asks for {cpus:g} CPUs, {gpus} GPUs and "
                    f"{format_memory(memory)}; this worker has {self.cpus:g}, {len(self.gpu_ids)} and "
                    f"{format_memory(self.memory)}, so it leaves the job to a larger worker"
                )

    def _nothing_to_wait_for(self) -> bool:
        if self.job_id is None:
            return self._peek() is None
        # A pod waits while its job runs in another pod that is alive (a stray pod, or one run by hand):
        # when that one stops, it hands the job back or goes silent and the reaper here does.
        with self.platform.db.read() as s:
            status = s.scalar(select(Job.status).where(Job.id == self.job_id))
        if status == "RUNNING" and not self._said_waiting:
            self._said_waiting = True
            self._log(f"job {self.job_id} is running in another pod; waiting for it to end or go silent")
        return status not in ("SUBMITTED", "RUNNING")

    def _peek(self) -> Job | None:
        """The best queued job this worker could ever run (a plain read)."""
        with self.platform.db.read() as s:
            return s.scalars(
                select(Job).where(*self._queue_filter()).order_by(*self._queue_order()).limit(1)
            ).first()

    def _fits(self, job: Job) -> bool:
        free_cpus, free_gpus, free_mem = self.free
        return job.cpus <= free_cpus + 1e-9 and job.gpus <= free_gpus and job.memory <= free_mem

    def _claim_one(self) -> bool:
        # A read first: an idle worker polling an empty (or blocked) queue takes no write lock.
        head = self._peek()
        if head is None or not self._fits(head):
            return False
        try:
            return self._claim()
        except PermissionDeniedError as exc:
            # Its role was lowered, its user disabled or its token revoked since it started: a long-lived
            # worker must not go on claiming (and running jobs with its environment). run() then stops and
            # hands its running jobs back.
            self.platform.audit(self.ctx, self.action, job_ref(head.id), "denied", {"message": exc.message})
            raise

    def _claim(self) -> bool:
        with self.platform.db.write() as s:
            self.platform.recheck(s, self.ctx, self.action)
            # The best job this worker could ever run; rows another worker is claiming right now are
            # skipped, not waited for (PostgreSQL). Strict priority: if it does not fit what is free now,
            # claim nothing (no lower-priority backfill) and try again when a running job ends.
            job = s.execute(
                select(Job)
                .where(*self._queue_filter())
                .order_by(*self._queue_order())
                .limit(1)
                .with_for_update(skip_locked=True)
            ).scalar_one_or_none()
            if job is None or not self._fits(job):
                return False
            job.status, job.worker, job.attempts = "RUNNING", self.name, job.attempts + 1
            job.started_at, job.heartbeat_at, job.exit_code = utcnow(), self.platform.db.now(), None
            job.stale_at = self._stale_at()
            s.flush()
            s.refresh(job)
            info = _info(job, self.ctx.project)
            self.platform.audit(
                self.ctx,
                self.action,
                job_ref(job.id),
                "ok",
                {"event": "claim", "worker": self.name, "attempt": job.attempts},
                session=s,
            )
        self.claimed += 1
        try:
            self._start(info)
        except Exception as exc:  # could not even start the process: the job fails, the worker goes on
            self.exit_code = 1
            status, reason = self._failed(info, f"could not start: {type(exc).__name__}: {exc}")
            self._finish(info.id, info.attempts, status, None, reason)
        return True

    def _start(self, job: JobInfo) -> None:
        tmpdir = Path(tempfile.mkdtemp(prefix=f"yard-job-{job.id}-"))  # mode 0700
        try:
            recipe_file = tmpdir / _safe_file_name(job.recipe_name)
            fd = os.open(recipe_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(_runnable(job.recipe, job.recipe_name))
            busy = {g for r in self.running.values() for g in r.gpu_ids}
            gpu_ids = [g for g in self.gpu_ids if g not in busy][: job.gpus]
            env = dict(os.environ)
            # The CPUs the job asked for are its thread budget: PyTorch and ONNX Runtime read these. Without
            # them every job spins one OpenMP thread per core, and two jobs sharing a machine stall each
            # other's barriers (steps 5-10x slower here) instead of each using its share.
            threads = str(max(1, int(job.cpus)))
            env.update(
                YARD_JOB_ID=str(job.id),
                YARD_PROJECT=self.ctx.project,
                CUDA_VISIBLE_DEVICES=",".join(gpu_ids),
                PYTHONUNBUFFERED="1",
                YARD_AGENT="0",  # the job is this process tree, in its session and limits, never an agent's
                OMP_NUM_THREADS=threads,
                MKL_NUM_THREADS=threads,
            )
            argv = self.executor(job, recipe_file)
            proc = subprocess.Popen(
                [sys.executable, "-c", _SHIM, str(os.getpid()), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: cancel stops its children too
            )
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        entry = _Running(job, job.attempts, proc, tmpdir, gpu_ids, threading.Thread())
        entry.reader = threading.Thread(target=self._read, args=(entry,), daemon=True, name=f"job-{job.id}")
        entry.reader.start()
        self.running[job.id] = entry
        self._log(
            f"job {job.id} attempt {job.attempts}: started {job.command} {job.recipe_name} (pid {proc.pid})"
        )

    def _read(self, entry: _Running) -> None:
        assert entry.proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = entry.proc.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            if data and self._echo is not None:
                with contextlib.suppress(Exception):  # a closed stdout must not stop the store's copy
                    self._echo(data)
            text = decoder.decode(data, final=not data)
            if text:
                with entry.lock:
                    entry.pending.append(text)
            if not data:
                self._wake.set()
                return

    # -- logs, heartbeats, cancellation ----------------------------------------------------------------------
    def _pump_logs(self, only: _Running | None = None) -> None:
        for entry in [only] if only is not None else list(self.running.values()):
            with entry.lock:
                text, entry.pending = "".join(entry.pending), []
            if not text:
                continue
            text = text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
            room = MAX_LOG_CHARS - entry.logged
            if room <= 0:
                continue
            if len(text) > room:
                text = (
                    text[:room] + f"\n[yard] log truncated at {MAX_LOG_CHARS:,} characters for this attempt\n"
                )
                entry.logged = MAX_LOG_CHARS
            else:
                entry.logged += len(text)
            now = utcnow()
            rows = [
                {
                    "job_id": entry.job.id,
                    "attempt": entry.attempt,
                    "ts": now,
                    "data": text[i : i + _LOG_CHUNK],
                }
                for i in range(0, len(text), _LOG_CHUNK)
            ]
            with self.platform.db.write() as s:
                s.execute(cast(Table, JobLog.__table__).insert(), rows)

    def _heartbeat(self) -> None:
        if not self.running:
            return
        with self.platform.db.write() as s:
            s.execute(
                update(Job)
                .where(Job.id.in_(list(self.running)), Job.status == "RUNNING", Job.worker == self.name)
                .values(heartbeat_at=self.platform.db.now(), stale_at=self._stale_at())
                .execution_options(synchronize_session=False)
            )

    def _stale_at(self) -> Any:
        """When this worker's jobs count as lost without a heartbeat: its own timeout, the store's clock."""
        return self.platform.db.now() + timedelta(seconds=self.platform.settings.job_heartbeat_timeout_s)

    def _check_lost(self) -> None:
        """A job cancelled, or re-queued by a reaper, is no longer ours: stop its process."""
        if not self.running:
            return
        with self.platform.db.read() as s:
            rows = {
                jid: (status, worker, attempts)
                for jid, status, worker, attempts in s.execute(
                    select(Job.id, Job.status, Job.worker, Job.attempts).where(Job.id.in_(list(self.running)))
                )
            }
        for jid, entry in self.running.items():
            status, worker, attempts = rows.get(jid, ("GONE", None, 0))
            if entry.lost is None and (
                status != "RUNNING" or worker != self.name or attempts != entry.attempt
            ):
                entry.lost = status
                self._log(f"job {jid}: {status.lower()} elsewhere; stopping its process")
                self._terminate(entry)

    def _terminate(self, entry: _Running) -> None:
        if entry.term_at is None and entry.proc.poll() is None:
            entry.term_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry.proc.pid, signal.SIGTERM)

    def _enforce_memory(self) -> None:
        """A job using more memory than it asked for is killed, as a container's OOM killer would: jobs are
        placed by their requests, so one that overruns starves its neighbours. Sampled every tick, so a
        sudden allocation can overshoot until the next sample; Kubernetes jobs are held by their cgroup."""
        for entry in self.running.values():
            limit = entry.job.memory
            if not limit or entry.over_memory is not None or entry.proc.poll() is not None:
                continue
            used = _group_memory(entry.proc.pid)
            if used <= limit:
                continue
            entry.over_memory = used
            note = f"{_memory_exceeded(used, limit)}; killing the job"
            with entry.lock:
                entry.pending.append(f"[yard] {note}\n")
            self._log(f"job {entry.job.id}: {note}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry.proc.pid, signal.SIGKILL)

    def _escalate(self) -> None:
        grace = self.platform.settings.job_kill_grace_s
        for entry in self.running.values():
            if (
                entry.term_at is not None
                and entry.proc.poll() is None
                and time.monotonic() - entry.term_at > grace
            ):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(entry.proc.pid, signal.SIGKILL)

    # -- completion ------------------------------------------------------------------------------------------
    def _collect(self) -> None:
        for jid, entry in list(self.running.items()):
            code = entry.proc.poll()
            if code is None and not entry.reader.is_alive():  # its output ended: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = entry.proc.wait(timeout=0.1)
            if code is None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry.proc.pid, signal.SIGKILL)  # leftovers of its process group hold the pipe
            entry.reader.join(timeout=10)
            # Every log chunk is stored before the job is final. If the store fails here or below, the
            # entry stays (and is heartbeated): the next pass tries again, so no outcome is lost.
            self._pump_logs(entry)
            succeeded = stopped = False
            if entry.lost is None:
                # Stopped by this worker's shutdown: the exit status decides. A job that exits 0 on SIGTERM
                # finished its work (say it saved a last checkpoint and ended); anything else goes back.
                if self._stop.is_set() and entry.term_at is not None and code != 0:
                    self._requeue(entry)
                    stopped = True
                else:
                    if code == 0 and entry.over_memory is None:
                        status, reason = "SUCCEEDED", None
                    else:
                        why = _exit_reason(code)
                        if entry.over_memory is not None:
                            why = f"{_memory_exceeded(entry.over_memory, entry.job.memory)} (--memory)"
                        status, reason = self._failed(entry.job, why)
                    self._finish(jid, entry.attempt, status, code, reason)
                    succeeded = status == "SUCCEEDED"
            # A pod's exit status tells the cluster whether to run it again: never 0 unless it succeeded.
            self.exit_code = code if code != 0 or succeeded else (128 + signal.SIGTERM if stopped else 1)
            if entry.proc.stdout is not None:
                entry.proc.stdout.close()
            shutil.rmtree(entry.tmpdir, ignore_errors=True)
            del self.running[jid]

    def _failed(self, job: JobInfo, why: str) -> tuple[str, str]:
        """Status and reason of a failed attempt: FAILED, or for a pod with attempts left SUBMITTED (the
        cluster, not a worker, runs the next attempt: backoffLimit is max_retries)."""
        if self.job_id is not None and _cluster_retries(job):
            return (
                "SUBMITTED",
                f"attempt {job.attempts} of {job.max_retries + 1} failed: {why}; the cluster runs it again",
            )
        return "FAILED", why

    def _finish(self, jid: int, attempt: int, status: str, code: int | None, reason: str | None) -> None:
        final = status in TERMINAL
        with self.platform.db.write() as s:
            # Only while the job is still ours: a cancel or a reaper's re-queue wins over a late finish.
            done = s.execute(
                update(Job)
                .where(
                    Job.id == jid, Job.status == "RUNNING", Job.worker == self.name, Job.attempts == attempt
                )
                .values(
                    status=status,
                    exit_code=code,
                    reason=reason,
                    # Final, or SUBMITTED: a pod's failed attempt handed back for the cluster's retry.
                    finished_at=utcnow() if final else None,
                    worker=self.name if final else None,
                    heartbeat_at=Job.heartbeat_at if final else None,
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if done:
                self.platform.audit(
                    self.ctx,
                    self.action,
                    job_ref(jid),
                    "ok",
                    {"event": "finish", "status": status, "exit_code": code, "worker": self.name},
                    session=s,
                )
        if done:
            self.finished.append((jid, status))
            self._log(f"job {jid} attempt {attempt}: {status}" + (f" ({reason})" if reason else ""))

    def _requeue(self, entry: _Running) -> None:
        """The worker is stopping: hand the job back (not counted as a retry; a train job resumes its run).
        A pod's job goes back to SUBMITTED: the pod was stopped (evicted, drained, its Job deleted) and
        whether it runs again is the cluster's call."""
        jid = entry.job.id
        back, reason = "QUEUED", f"worker {self.name} stopped"
        if self.job_id is not None:
            back, reason = "SUBMITTED", f"pod {self.name} was stopped; the cluster may run it again"
        with self.platform.db.write() as s:
            done = s.execute(
                update(Job)
                .where(
                    Job.id == jid,
                    Job.status == "RUNNING",
                    Job.worker == self.name,
                    Job.attempts == entry.attempt,
                )
                .values(status=back, worker=None, heartbeat_at=None, reason=reason)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if done:
                self.platform.audit(
                    self.ctx,
                    self.action,
                    job_ref(jid),
                    "ok",
                    {"event": "requeue", "worker": self.name},
                    session=s,
                )
        self._log(f"job {jid}: handed back to the queue")


def _safe_file_name(name: str) -> str:
    """The recipe's file name for the private copy (the command may show it); never a path."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[:128]
    return cleaned if cleaned and not cleaned.startswith(".") else "recipe.yaml"


def _memory_exceeded(used: int, limit: int) -> str:
    return f"memory limit exceeded: {used / 2**20:.1f} MiB in use, {format_memory(limit)} requested"


def _group_memory(pid: int) -> int:
    """Memory of a job: the proportional set size (shared pages split between sharers, so forked data
    loader workers are not counted twice) of its process and every descendant; RSS where PSS is unknown."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except (psutil.Error, OSError):  # gone, or /proc unreadable: nothing to hold it to this tick
        return 0
    total = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.AccessDenied:
            with contextlib.suppress(psutil.Error, OSError):
                total += proc.memory_info().rss
        except (psutil.Error, OSError):  # exited meanwhile
            continue
    return total


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"
