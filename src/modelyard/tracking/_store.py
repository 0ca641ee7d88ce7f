"""Tracking services: experiments, runs, params, tags, metric batches, heartbeats, the reaper, artifacts.

Every function takes (platform, ctx) like the core services. Run creation, status changes, deletion,
params, tags and artifacts go through ``platform.mutate`` (authorised and audited in one transaction).
Metric batches and heartbeats are authorised but not audited: they are telemetry, and appending to the
audit chain would serialise every writer of every run on its head row.
"""

from __future__ import annotations

import decimal
import math
import numbers
import operator
import os
import re
import stat
import unicodedata
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from modelyard.core import _audit, _gc
from modelyard.core._artifacts import check_outside_home
from modelyard.core._checkpoints import remove_run_checkpoints, run_checkpoints
from modelyard.core._db import insert_for
from modelyard.core._models import (
    Dataset,
    DatasetVersion,
    Experiment,
    MetricBatch,
    Project,
    Run,
    RunArtifact,
    RunLatestMetric,
    RunMetric,
    RunParam,
    RunTag,
)
from modelyard.core._paths import temp_prefix
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.errors import (
    NotFoundError,
    PermissionDeniedError,
    UnsafePathError,
    UsageError,
    ValidationError,
)
from modelyard.tracking._lineage import add_edges, artifact_ref, dataset_ref, run_ref

STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
TERMINAL = ("FINISHED", "FAILED", "KILLED")
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_NAME = 256
# Letters, digits and a few separators, like MLflow's key rule; no leading '/', no '..' segment.
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-/ ]{1,250}\Z")
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
_EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- /]{0,127}\Z")
_DATASET_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})(?:@(?P<version>[0-9]{1,9}))?\Z")
_ROWS = 500  # rows per multi-row statement, well under SQLite's bound-variable limit
REAPER = "system:reaper"
DEFAULT_EXPERIMENT = "Default"


# -- validation: bad input never reaches the store or the metric buffer ------------------------------------
def check_key(key: object, what: str = "key") -> str:
    if not isinstance(key, str):
        raise ValidationError(f"{what} must be a string, got {type(key).__name__}")
    if not _KEY_RE.match(key) or key.startswith("/") or ".." in key.split("/") or key.strip() != key:
        shown = key if len(key) <= 60 else key[:57] + "..."
        raise ValidationError(
            f"{what} {shown!r} is not valid: use 1-{MAX_KEY} letters, digits, '_', '-', '.', '/' or spaces "
            "(no leading '/' or '..' segment, no surrounding spaces)"
        )
    return key


def check_value(key: str, value: object) -> float | None:
    """A finite number or NaN (stored as NULL; SQLite cannot store NaN)."""
    # Decimal is no numbers.Real (it will not mix with floats implicitly), yet a metric is stored as one.
    if isinstance(value, bool) or not isinstance(value, numbers.Real | decimal.Decimal):
        raise ValidationError(f"metric {key!r}: value must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except (OverflowError, ValueError) as exc:  # an int beyond the float range, a signaling NaN, ...
        raise ValidationError(f"metric {key!r}: value does not fit in a float ({exc})") from None
    if math.isnan(v):
        return None
    if math.isinf(v):
        raise ValidationError(f"metric {key!r}: value must be finite or NaN, got {v}")
    return v


def check_step(key: str, step: object) -> int:
    if isinstance(step, bool):
        raise ValidationError(f"metric {key!r}: step must be an integer, got bool")
    try:
        n = operator.index(step)  # type: ignore[arg-type]
    except TypeError:
        raise ValidationError(f"metric {key!r}: step must be an integer, got {type(step).__name__}") from None
    if not -(2**63) <= n < 2**63:
        raise ValidationError(f"metric {key!r}: step {n} does not fit in 64 bits")
    return n


def check_timestamp(key: str, ts: object) -> int:
    """Epoch milliseconds, as MLflow takes them."""
    if isinstance(ts, bool):
        raise ValidationError(f"metric {key!r}: timestamp must be epoch milliseconds (int), got bool")
    try:
        n = operator.index(ts)  # type: ignore[arg-type]
    except TypeError:
        raise ValidationError(
            f"metric {key!r}: timestamp must be epoch milliseconds (int), got {type(ts).__name__}"
        ) from None
    if not 0 <= n < 2**53:
        raise ValidationError(f"metric {key!r}: timestamp {n} is out of range (epoch milliseconds)")
    return n


def check_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise UsageError(f"{run_id!r} is not a run id; expected 32 lower-case hex characters")
    return run_id


def _text(kind: str, key: str, value: object, limit: int) -> str:
    if isinstance(value, bytes):
        raise ValidationError(f"{kind} {key!r}: bytes are not a valid value; decode them first")
    try:
        text = value if isinstance(value, str) else str(value)
    except ValueError as exc:  # e.g. an int of more digits than str() writes
        raise ValidationError(f"{kind} {key!r}: value cannot be written as text: {exc}") from None
    if len(text) > limit:
        raise ValidationError(f"{kind} {key!r}: value has {len(text)} characters; at most {limit} allowed")
    if "\x00" in text:
        raise ValidationError(f"{kind} {key!r}: value contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: Python's stand-in for an undecodable byte
        raise ValidationError(
            f"{kind} {key!r}: value is not valid Unicode: {text[exc.start]!r} at position {exc.start} "
            "(an undecodable byte of a file name or argument?); decode the bytes properly or escape them"
        ) from None
    return text


def check_pairs(kind: str, values: Mapping[str, object], limit: int) -> dict[str, str]:
    if not isinstance(values, Mapping):
        raise ValidationError(f"{kind}s must be a mapping of key to value, got {type(values).__name__}")
    return {check_key(k, f"{kind} key"): _text(kind, k, v, limit) for k, v in values.items()}


def check_experiment(name: object) -> str:
    if not isinstance(name, str) or not _EXPERIMENT_RE.match(name):
        raise ValidationError(
            f"experiment name {name!r} is not valid: use 1-128 letters, digits, '.', '_', '-', '/' "
            "or spaces, starting with a letter or digit"
        )
    return name


# -- read models ----------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    id: str
    experiment: str
    name: str
    status: str
    start_time: datetime
    end_time: datetime | None
    user: str
    host: str
    parent_id: str | None = None
    reason: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)  # latest value per key

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "name": self.name,
            "status": self.status,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "user": self.user,
            "host": self.host,
            "parent_id": self.parent_id,
            "reason": self.reason,
            "params": self.params,
            "tags": self.tags,
            "metrics": self.metrics,
        }


class MetricPoint(NamedTuple):  # a tuple: built once per logged point, so it must be cheap
    key: str
    value: float | None
    step: int
    timestamp: int  # epoch ms


def load_runs(s: Session, rows: Sequence[tuple[Run, str]]) -> list[RunInfo]:
    """RunInfo for (run, experiment name) rows, with params, tags and latest metrics loaded in bulk."""
    infos = {
        r.id: RunInfo(
            r.id,
            exp,
            r.name,
            r.status,
            as_utc(r.start_time),
            as_utc(r.end_time) if r.end_time else None,
            r.user,
            r.host,
            r.parent_id,
            r.reason,
        )
        for r, exp in rows
    }
    ids = list(infos)
    for i in range(0, len(ids), _ROWS):
        chunk = ids[i : i + _ROWS]
        for run_id, k, v in s.execute(
            select(RunParam.run_id, RunParam.key, RunParam.value).where(RunParam.run_id.in_(chunk))
        ):
            infos[run_id].params[k] = v
        for run_id, k, v in s.execute(
            select(RunTag.run_id, RunTag.key, RunTag.value).where(RunTag.run_id.in_(chunk))
        ):
            infos[run_id].tags[k] = v
        for run_id, k, mv in s.execute(
            select(RunLatestMetric.run_id, RunLatestMetric.key, RunLatestMetric.value).where(
                RunLatestMetric.run_id.in_(chunk)
            )
        ):
            infos[run_id].metrics[k] = mv
    return [infos[r.id] for r, _ in rows]


def _run_row(s: Session, ctx: Context, run_id: str) -> Run:
    # Another project's run reads as "not found": existence is not leaked across tenants.
    run = s.execute(
        select(Run).where(Run.id == run_id, Run.project_id == ctx.project_id)
    ).scalar_one_or_none()
    if run is None:
        raise NotFoundError(
            f"run {run_id} not found in project {ctx.project!r}; list runs with `yard runs ls`"
        )
    return run


def resolve_run_id(platform: Platform, ctx: Context, text: str) -> str:
    """A full run id, or a unique prefix of at least 6 characters (what `yard runs ls` shows)."""
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{6,32}", text):
        raise UsageError(f"{text!r} is not a run id; expected 32 (or a unique prefix of 6+) hex characters")
    if len(text) == 32:
        return text
    with platform.db.read() as s:
        ids = s.scalars(
            select(Run.id).where(Run.project_id == ctx.project_id, Run.id.like(f"{text}%")).limit(2)
        ).all()
    if not ids:
        raise NotFoundError(f"run {text} not found in project {ctx.project!r}")
    if len(ids) > 1:
        raise UsageError(f"run id prefix {text} is ambiguous; give more characters")
    return ids[0]


# -- experiments and runs ---------------------------------------------------------------------------------
def _experiment_id(s: Session, ctx: Context, name: str) -> int:
    """Get or create; concurrent creators of one name both end up with the same row."""
    s.execute(
        insert_for(s)(Experiment)
        .values(project_id=ctx.project_id, name=name, created_at=utcnow(), created_by=ctx.user)
        .on_conflict_do_nothing()
    )
    return int(
        s.execute(
            select(Experiment.id).where(Experiment.project_id == ctx.project_id, Experiment.name == name)
        ).scalar_one()
    )


def list_experiments(platform: Platform, ctx: Context) -> list[tuple[str, int]]:
    """(name, number of runs) of ctx's project."""
    platform.authorize(ctx, "run.read", f"project:{ctx.project}")
    with platform.db.read() as s:
        rows = s.execute(
            select(Experiment.name, func.count(Run.id))
            .outerjoin(Run, Run.experiment_id == Experiment.id)
            .where(Experiment.project_id == ctx.project_id)
            .group_by(Experiment.name)
            .order_by(Experiment.name)
        ).all()
    return [(n, int(c)) for n, c in rows]


def create_run(
    platform: Platform,
    ctx: Context,
    experiment: str,
    *,
    name: str | None = None,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, object] | None = None,
    parent_id: str | None = None,
    host: str = "",
    pid: int | None = None,
) -> str:
    """A new RUNNING run; params and tags are written in the same audited transaction."""
    run_id = uuid.uuid4().hex
    resource = run_ref(run_id)
    platform.authorize(ctx, "run.write", resource)
    try:
        check_experiment(experiment)
        _check_name(name)
        p = check_pairs("param", params or {}, MAX_PARAM_VALUE)
        t = check_pairs("tag", tags or {}, MAX_TAG_VALUE)
        if parent_id is not None:
            check_run_id(parent_id)
    except UsageError as exc:
        raise platform.refuse(ctx, "run.write", resource, exc) from None
    detail = {"experiment": experiment, "params": len(p), "tags": len(t)}
    with platform.mutate(ctx, "run.write", resource, detail) as s:
        if parent_id is not None:
            _run_row(s, ctx, parent_id)
        now = utcnow()
        s.add(
            Run(
                id=run_id,
                project_id=ctx.project_id,
                experiment_id=_experiment_id(s, ctx, experiment),
                parent_id=parent_id,
                name=name or f"run-{run_id[:8]}",
                status="RUNNING",
                start_time=now,
                heartbeat_at=platform.db.now(),
                stale_at=_stale_at(platform),
                user=ctx.user,
                host=host[:256],
                pid=pid,
            )
        )
        s.flush()
        _put_pairs(s, RunParam, run_id, p)
        _put_pairs(s, RunTag, run_id, t)
    return run_id


def _check_name(name: object) -> None:
    if name is not None and (
        not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isprintable()
    ):
        raise ValidationError(
            f"run name must be a string of 1-{MAX_NAME} printable characters (no control characters)"
        )


def resume_run(
    platform: Platform,
    ctx: Context,
    run_id: str,
    *,
    experiment: str | None = None,
    name: str | None = None,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, object] | None = None,
) -> None:
    """Mark an existing run RUNNING again (another process or a restart continues it), in one audited
    transaction with a new ``name`` and the ``params`` (which may not change) and ``tags`` given;
    ``experiment``, if given, must be the run's own. Bad input changes nothing."""
    check_run_id(run_id)
    resource = run_ref(run_id)
    platform.authorize(ctx, "run.write", resource)
    try:
        if experiment is not None:
            check_experiment(experiment)
        _check_name(name)
        p = check_pairs("param", params or {}, MAX_PARAM_VALUE)
        t = check_pairs("tag", tags or {}, MAX_TAG_VALUE)
    except UsageError as exc:
        raise platform.refuse(ctx, "run.write", resource, exc) from None
    detail: dict[str, Any] = {"resume": True}
    detail.update({f"{kind}s": sorted(pairs)[:50] for kind, pairs in (("param", p), ("tag", t)) if pairs})
    with platform.mutate(ctx, "run.write", resource, detail) as s:
        run = _run_row(s, ctx, run_id)
        if experiment is not None:
            own = s.execute(select(Experiment.name).where(Experiment.id == run.experiment_id)).scalar_one()
            if own != experiment:
                raise UsageError(
                    f"run {run_id} belongs to experiment {own!r}, not {experiment!r}; a run cannot move: "
                    "leave the experiment out to continue it"
                )
        _put_pairs(s, RunParam, run_id, p)
        _put_pairs(s, RunTag, run_id, t)
        run.status, run.end_time, run.reason = "RUNNING", None, None
        run.heartbeat_at, run.stale_at = platform.db.now(), _stale_at(platform)
        if name is not None:
            run.name = name


def end_run(
    platform: Platform, ctx: Context, run_id: str, status: str = "FINISHED", reason: str | None = None
) -> None:
    check_run_id(run_id)
    resource = run_ref(run_id)
    platform.authorize(ctx, "run.write", resource)
    try:
        if status not in TERMINAL:
            final = ", ".join(TERMINAL)
            raise UsageError(f"status {status!r} is not a final status; expected one of {final}")
        if reason is not None and not isinstance(reason, str):
            raise UsageError(f"reason must be a string, got {type(reason).__name__}")
    except UsageError as exc:
        raise platform.refuse(ctx, "run.write", resource, exc) from None
    with platform.mutate(ctx, "run.write", resource, {"status": status}) as s:
        run = _run_row(s, ctx, run_id)
        run.status, run.end_time = status, utcnow()
        run.reason = _storable(reason)[:2000] if reason else None


def _storable(text: str) -> str:
    """``text`` with what no store can hold written as escapes: NUL (PostgreSQL refuses it) and lone
    surrogates (not UTF-8; Python makes them of undecodable bytes in file names and argv). A reason is
    usually an exception's message, and refusing it would leave the run RUNNING."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def delete_run(platform: Platform, ctx: Context, run_id: str) -> None:
    """Delete a run with its params, tags and metrics, and its checkpoints in this home (plain files of the
    user's data, kept for resume, which a deleted run cannot have); its children lose their parent link.
    Refused while a process on this machine trains the run. Checkpoints that cannot be deleted are a
    warning (the deletion stands; `yard gc` tries again); the audit record says what became of them."""
    check_run_id(run_id)
    root = run_checkpoints(platform.settings.home, run_id)
    detail: dict[str, Any] = {}
    problem: str | None = None
    with platform.mutate(ctx, "run.delete", run_ref(run_id), detail) as s:
        _run_row(s, ctx, run_id)
        s.execute(delete(Run).where(Run.id == run_id))
        # Before the commit, so that the record says what became of them. Should the commit fail after
        # this, the run stays without checkpoints (a resume starts at step 0): never a run gone and its
        # data left behind unsaid.
        if root.exists() or root.is_symlink():
            problem = remove_run_checkpoints(root, run_id)
            detail["checkpoints"] = "deleted" if problem is None else f"not deleted: {problem}"[:500]
    if problem is not None:
        warnings.warn(
            f"run {run_id[:8]} deleted, but its checkpoints {root} could not be deleted ({problem}); they "
            "hold its weights and tokenizer in plain files: delete the folder (or run `yard gc` again)",
            stacklevel=2,
        )


def get_run(platform: Platform, ctx: Context, run_id: str) -> RunInfo:
    check_run_id(run_id)
    platform.authorize(ctx, "run.read", run_ref(run_id))
    reap_stale_runs(platform, ctx)
    with platform.db.read() as s:
        run = _run_row(s, ctx, run_id)
        exp = s.execute(select(Experiment.name).where(Experiment.id == run.experiment_id)).scalar_one()
        return load_runs(s, [(run, exp)])[0]


def _put_pairs(s: Session, model: type[RunParam] | type[RunTag], run_id: str, values: dict[str, str]) -> None:
    if not values:
        return
    rows = [{"run_id": run_id, "key": k, "value": v} for k, v in values.items()]
    ins = insert_for(s)
    for i in range(0, len(rows), _ROWS):
        stmt = ins(model).values(rows[i : i + _ROWS])
        if model is RunTag:  # tags may change; params may not (like MLflow)
            stmt = stmt.on_conflict_do_update(
                index_elements=["run_id", "key"], set_={"value": stmt.excluded.value}
            )
        else:
            stmt = stmt.on_conflict_do_nothing()
        s.execute(stmt)
    if model is RunParam:
        keys, stored = list(values), dict[str, str]()
        for i in range(0, len(keys), _ROWS):  # one IN list of them all passed the drivers' bind limits
            found = select(RunParam.key, RunParam.value).where(
                RunParam.run_id == run_id, RunParam.key.in_(keys[i : i + _ROWS])
            )
            stored.update((k, v) for k, v in s.execute(found))  # a Result has keys(): not a mapping
        changed = sorted(k for k, v in values.items() if stored.get(k) != v)
        if changed:
            # Only the key: this message lands in the permanent audit chain, and values may be secrets.
            raise UsageError(
                f"param {changed[0]!r} of run {run_id} already has a different value; params cannot "
                "change; log a new param name or start a new run"
            )


def _write_pairs(
    platform: Platform,
    ctx: Context,
    run_id: str,
    kind: str,
    table: type[RunParam] | type[RunTag],
    pairs: Mapping[str, object],
    limit: int,
) -> None:
    """Validate, then write params or tags in one audited transaction (bad input refused and audited)."""
    check_run_id(run_id)
    resource = run_ref(run_id)
    platform.authorize(ctx, "run.write", resource)
    try:
        values = check_pairs(kind, pairs, limit)
    except UsageError as exc:
        raise platform.refuse(ctx, "run.write", resource, exc) from None
    with platform.mutate(ctx, "run.write", resource, {f"{kind}s": sorted(values)[:50]}) as s:
        _run_row(s, ctx, run_id)
        _put_pairs(s, table, run_id, values)


def log_params(platform: Platform, ctx: Context, run_id: str, params: Mapping[str, object]) -> None:
    _write_pairs(platform, ctx, run_id, "param", RunParam, params, MAX_PARAM_VALUE)


def set_tags(platform: Platform, ctx: Context, run_id: str, tags: Mapping[str, object]) -> None:
    _write_pairs(platform, ctx, run_id, "tag", RunTag, tags, MAX_TAG_VALUE)


# -- metrics ---------------------------------------------------------------------------------------------
def check_run_writable(platform: Platform, ctx: Context, run_id: str) -> None:
    """What a metric writer checks once when it attaches to a run: the role, and that the run exists in
    ctx's project. Batches then only re-check the role (in memory)."""
    check_run_id(run_id)
    platform.authorize(ctx, "run.write", run_ref(run_id))
    with platform.db.read() as s:
        _run_row(s, ctx, run_id)


def write_metric_batch(
    platform: Platform, ctx: Context, run_id: str, batch_id: str, points: Sequence[MetricPoint]
) -> bool:
    """Write one batch in one transaction; False if this batch id was already committed (a retry after a
    lost acknowledgement), in which case nothing is written twice."""
    resource = run_ref(run_id)
    platform.authorize(ctx, "run.write", resource)
    try:
        return _write_metric_batch(platform, ctx, run_id, batch_id, points)
    except PermissionDeniedError as exc:  # a revoked role stops the writer (it gives up, see _writer)
        platform.audit(ctx, "run.write", resource, "denied", {"metrics": len(points), "message": exc.message})
        raise


def _write_metric_batch(
    platform: Platform, ctx: Context, run_id: str, batch_id: str, points: Sequence[MetricPoint]
) -> bool:
    with platform.db.write() as s:
        platform.recheck(s, ctx, "run.write")
        ins = insert_for(s)
        claimed = s.execute(
            ins(MetricBatch)
            .values(batch_id=batch_id, run_id=run_id)
            .on_conflict_do_nothing()
            .returning(MetricBatch.batch_id)
        ).first()
        if claimed is None:
            return False
        rows = [
            {"run_id": run_id, "key": p.key, "value": p.value, "step": p.step, "ts": p.timestamp}
            for p in points
        ]
        # Core insert + executemany: no ORM unit of work for thousands of plain rows.
        s.execute(cast(Table, RunMetric.__table__).insert(), rows)
        latest: dict[str, MetricPoint] = {}
        for p in points:
            cur = latest.get(p.key)
            if cur is None or (p.step, p.timestamp) >= (cur.step, cur.timestamp):
                latest[p.key] = p
        # Sorted keys: concurrent writers of one run lock the latest rows in the same order (no deadlock).
        keys = sorted(latest)
        for i in range(0, len(keys), _ROWS):
            stmt = ins(RunLatestMetric).values(
                [
                    {"run_id": run_id, "key": k, "value": p.value, "step": p.step, "ts": p.timestamp}
                    for k in keys[i : i + _ROWS]
                    for p in (latest[k],)
                ]
            )
            cur_t = RunLatestMetric.__table__.c
            stmt = stmt.on_conflict_do_update(
                index_elements=["run_id", "key"],
                set_={"value": stmt.excluded.value, "step": stmt.excluded.step, "ts": stmt.excluded.ts},
                where=or_(
                    stmt.excluded.step > cur_t.step,
                    and_(stmt.excluded.step == cur_t.step, stmt.excluded.ts >= cur_t.ts),
                ),
            )
            s.execute(stmt)
    return True


def metric_history(
    platform: Platform, ctx: Context, run_id: str, keys: Iterable[str] | str | None = None
) -> dict[str, list[MetricPoint]]:
    """Every point of a run's metrics (or of ``keys``, or of the one key ``keys``), ordered by step and
    time."""
    check_run_id(run_id)
    if isinstance(keys, str):  # MLflow's get_metric_history(run_id, "loss"): one key, not its letters
        keys = [keys]
    elif keys is not None and not isinstance(keys, Iterable):
        raise UsageError(f"keys must be a metric key or a list of them, got {type(keys).__name__}")
    wanted = [check_key(k, "metric key") for k in keys] if keys is not None else None
    platform.authorize(ctx, "run.read", run_ref(run_id))
    with platform.db.read() as s:
        _run_row(s, ctx, run_id)
        q = select(RunMetric.key, RunMetric.value, RunMetric.step, RunMetric.ts).where(
            RunMetric.run_id == run_id
        )
        if wanted is not None:
            q = q.where(RunMetric.key.in_(wanted))
        out: dict[str, list[MetricPoint]] = {}
        for k, v, step, ts in s.execute(
            q.order_by(RunMetric.key, RunMetric.step, RunMetric.ts, RunMetric.id)
        ):
            out.setdefault(k, []).append(MetricPoint(k, v, step, ts))
    return out


# -- liveness ---------------------------------------------------------------------------------------------
def heartbeat(platform: Platform, run_id: str) -> None:
    """Prove the owning process is alive. Not audited: liveness telemetry, every few seconds per run."""
    with platform.db.write() as s:
        s.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == "RUNNING")
            .values(heartbeat_at=platform.db.now(), stale_at=_stale_at(platform))
        )


def _stale_at(platform: Platform) -> Any:
    """When a run this process owns counts as dead without a heartbeat: its own timeout, not the reaper's
    (a process pausing for long, e.g. a checkpoint upload, raises YARD_RUN_HEARTBEAT_TIMEOUT_S)."""
    return platform.db.now() + timedelta(seconds=platform.settings.run_heartbeat_timeout_s)


def reap_stale_runs(platform: Platform, ctx: Context | None = None) -> list[str]:
    """Mark RUNNING runs past their ``stale_at`` (the owning process's heartbeat timeout) FAILED, with a
    reason and one audit record each (actor ``system:reaper``). Scoped to ctx's project when given. Cheap
    when there is nothing to reap: one indexed read, no write lock."""
    timeout = platform.settings.run_heartbeat_timeout_s
    now = platform.db.now()
    cutoff = now - timedelta(seconds=timeout)
    # A run written before stale_at existed is judged by the reaper's timeout, as it was then.
    older = and_(Run.stale_at.is_(None), or_(Run.heartbeat_at < cutoff, Run.heartbeat_at.is_(None)))
    cond = [Run.status == "RUNNING", or_(Run.stale_at < now, older)]
    if ctx is not None:
        cond.append(Run.project_id == ctx.project_id)
    with platform.db.read() as s:
        if s.execute(select(Run.id).where(*cond).limit(1)).first() is None:
            return []
    reason = "no heartbeat within the run's timeout: the process died or lost the store"
    with platform.db.write() as s:
        # RETURNING names exactly the runs this UPDATE changed: a concurrent reaper (or a heartbeat that
        # landed in between) leaves them out, so each run is reaped and audited once.
        reaped = s.execute(
            update(Run)
            .where(*cond)
            .values(status="FAILED", end_time=now, reason=reason)
            .returning(Run.id, Run.heartbeat_at, Run.project_id)
            .execution_options(synchronize_session=False)
        ).all()
        if not reaped:
            return []
        projects = {
            pid: name
            for pid, name in s.execute(
                select(Project.id, Project.name).where(Project.id.in_({r[2] for r in reaped}))
            )
        }
        rows = [(run_id, hb, projects[pid]) for run_id, hb, pid in reaped]
        ids = [r[0] for r in rows]
        _audit.append_many(
            s,
            [
                {
                    "actor": REAPER,
                    "project": project,
                    "action": "run.write",
                    "resource": run_ref(run_id),
                    "outcome": "ok",
                    "detail": {
                        "status": "FAILED",
                        "reason": reason,
                        "last_heartbeat": as_utc(hb).isoformat() if hb else None,
                    },
                }
                for run_id, hb, project in rows
            ],
        )
    return ids


# -- artifacts and lineage -------------------------------------------------------------------------------
def artifact_files(
    platform: Platform, ctx: Context, run_id: str, src: Path, artifact_path: str | None
) -> list[tuple[Path, str]]:
    """(file, artifact path) for a file or every file under a directory, walked without following
    symbolic links: a link (the path itself, or a file or directory inside it) is refused, audited, before
    anything is stored, because following it could upload a file from outside the directory."""
    check_run_id(run_id)
    resource = run_ref(run_id)
    platform.authorize(ctx, "run.write", resource)
    try:
        if artifact_path is not None and not isinstance(artifact_path, str):
            raise UsageError(f"artifact_path must be a string, got {type(artifact_path).__name__}")
        files = _walk_artifact(src)
        if not files:
            raise UsageError(f"{src} holds no files to log")
        check_outside_home(platform, src, remedy="log files from outside it")
        _check_distinct(files)
    except UsageError as exc:
        raise platform.refuse(ctx, "run.write", resource, exc) from None
    # The name the path has once made absolute: Path('.').name is '' and Path('out/..').name is '..',
    # which made '/a.txt' and '../a.txt' of a plain directory's files.
    name = Path(os.path.abspath(src)).name
    if len(files) == 1 and files[0][1] == "":  # a single file
        return [(src, f"{artifact_path.rstrip('/')}/{name}" if artifact_path else name)]
    prefix = f"{artifact_path.rstrip('/')}/" if artifact_path else f"{name}/"
    return [(p, prefix + rel) for p, rel in files]


def _check_distinct(files: list[tuple[Path, str]]) -> None:
    """Artifact names are stored in Unicode NFC (see core._paths.safe_key), so two files whose names differ
    only in composition ('café' composed and decomposed: two files on Linux) would be one artifact: one
    would silently replace the other (SQLite), or the insert fail (PostgreSQL)."""
    seen: dict[str, Path] = {}
    for path, rel in files:
        key = unicodedata.normalize("NFC", rel)
        if key in seen:
            raise UsageError(
                f"{seen[key]} and {path} have the same artifact name {key!r} once normalised (Unicode NFC); "
                "rename one of them"
            )
        seen[key] = path


def _walk_artifact(src: Path) -> list[tuple[Path, str]]:
    """Regular files under ``src`` with their '/'-joined relative paths (``src`` itself: one file, ''),
    sorted; lstat and scandir(follow_symlinks=False), so a link is seen as a link, never followed."""
    try:
        st = os.lstat(src)
    except OSError:
        raise UsageError(f"{src} is not a file or directory") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{src} is a symbolic link; log the real path (links are not followed)")
    if stat.S_ISREG(st.st_mode):
        return [(src, "")]
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{src} is not a file or directory")
    out: list[tuple[Path, str]] = []
    todo = [(src, "")]
    while todo:
        folder, rel = todo.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            raise UsageError(f"cannot list {folder}: {exc.strerror or exc}") from None
        for e in entries:
            path, name = folder / e.name, rel + e.name
            if e.is_symlink():
                raise UnsafePathError(
                    f"{path} is a symbolic link; links are not followed (they could point outside the "
                    "directory): replace it with the file or remove it"
                )
            if e.is_dir(follow_symlinks=False):
                todo.append((path, name + "/"))
            elif e.is_file(follow_symlinks=False):
                out.append((path, name))
            else:
                raise UsageError(f"{path} is not a regular file (device, socket or pipe); remove it")
    return sorted(out, key=lambda t: t[1])


def log_artifacts(
    platform: Platform, ctx: Context, run_id: str, files: Sequence[tuple[Path, str]]
) -> list[tuple[str, str, int]]:
    """Store files (path, artifact path) through the encrypted artifact store, then record them on the run
    with an output lineage edge each. Returns (artifact path, digest, size)."""
    from modelyard.core._artifacts import put_artifacts

    check_run_id(run_id)
    platform.authorize(ctx, "run.write", run_ref(run_id))
    try:  # before anything is stored; a run that is not there is a refusal on record, as in mutate
        with platform.db.read() as s:
            _run_row(s, ctx, run_id)
    except NotFoundError as exc:
        raise platform.refuse(ctx, "run.write", run_ref(run_id), exc) from None
    since = _gc.generation(platform)
    infos = put_artifacts(platform, ctx, [p for p, _ in files], names=[n for _, n in files])
    now = utcnow()
    detail = {"artifacts": len(infos), "paths": [i.name for i in infos][:20]}
    with platform.mutate(ctx, "run.write", run_ref(run_id), detail) as s:
        if _gc.fence(s, since):  # the artifact references may have been removed and collected meanwhile
            _gc.require_stored(s, [i.digest for i in infos], f"run {run_id}'s artifacts")
        _run_row(s, ctx, run_id)
        stmt = insert_for(s)(RunArtifact).values(
            [
                {"run_id": run_id, "path": i.name, "digest": i.digest, "size": i.size, "created_at": now}
                for i in infos
            ]
        )
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=["run_id", "path"],
                set_={"digest": stmt.excluded.digest, "size": stmt.excluded.size, "created_at": now},
            )
        )
        add_edges(s, ctx, [(run_ref(run_id), artifact_ref(i.digest), "output") for i in infos])
    return [(i.name, i.digest, i.size) for i in infos]


def list_run_artifacts(platform: Platform, ctx: Context, run_id: str) -> list[tuple[str, str, int]]:
    check_run_id(run_id)
    platform.authorize(ctx, "run.read", run_ref(run_id))
    with platform.db.read() as s:
        _run_row(s, ctx, run_id)
        rows = s.execute(
            select(RunArtifact.path, RunArtifact.digest, RunArtifact.size)
            .where(RunArtifact.run_id == run_id)
            .order_by(RunArtifact.path)
        ).all()
    return [(p, d, int(n)) for p, d, n in rows]


def download_artifacts(
    platform: Platform,
    ctx: Context,
    run_id: str,
    prefix: str,
    dest_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a run's artifacts into ``dest_dir``: every artifact under the folder ``prefix`` (``"model"``)
    with its path relative to that folder, or the one artifact named ``prefix`` (``"recipe.yaml"``) as
    ``dest_dir/<its name>``, or with ``""`` all of them. Returns the local path of what was asked for
    (``dest_dir``, or the file).

    Reads go through the artifact store (decrypted, every byte verified against its SHA-256) into a temp
    directory beside ``dest_dir``, moved into place only once every file verified: a failure leaves
    ``dest_dir`` as it was. Artifact paths are checked like any key (``..``, absolute paths, encodings,
    symlinks in ``dest_dir``), so nothing lands outside it. A non-empty ``dest_dir`` is refused unless
    ``overwrite`` (then files of the same name are replaced and other files are kept)."""
    import shutil
    import tempfile

    from modelyard.core._artifacts import get_artifacts
    from modelyard.core._paths import safe_join, safe_key

    check_run_id(run_id)
    if not isinstance(prefix, str):
        raise UsageError(f"artifact path must be a string such as 'model', got {type(prefix).__name__}")
    want = safe_key(prefix.rstrip("/"), what="artifact path") if prefix.rstrip("/") else ""
    artifacts = list_run_artifacts(platform, ctx, run_id)
    exact = [(p, d) for p, d, _ in artifacts if p == want]
    single = bool(want) and bool(exact)
    if single:
        picked = [(want.rsplit("/", 1)[-1], exact[0][1])]
    else:
        cut = len(want) + 1 if want else 0
        picked = [(p[cut:], d) for p, d, _ in artifacts if not want or p.startswith(want + "/")]
    if not picked:
        some = ", ".join(p for p, _, _ in artifacts[:10]) + (", ..." if len(artifacts) > 10 else "")
        what = f"no artifact {want!r} and none under {want + '/'!r}" if want else "no artifacts"
        raise NotFoundError(
            f"run {run_id} has {what}" + (f"; its artifacts: {some}" if artifacts else ""), run_id=run_id
        )
    rels = [safe_key(rel, what="artifact path") for rel, _ in picked]

    dest = Path(dest_dir)
    if dest.is_symlink():
        raise UnsafePathError(f"{dest} is a symbolic link; download into a real directory")
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"{dest} exists and is not a directory; give a new or empty directory")
        if any(dest.iterdir()) and not overwrite:
            raise UsageError(
                f"{dest} is not empty; download into a new or empty directory (or allow overwriting)"
            )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f"{temp_prefix(dest.name or 'download')}download-", dir=dest.parent)
        )
    except OSError as exc:
        raise UsageError(f"cannot write into {dest.parent}: {exc.strerror or exc}") from None
    try:
        pairs = [(digest, safe_join(tmp, rel)) for rel, (_, digest) in zip(rels, picked, strict=True)]
        get_artifacts(platform, ctx, pairs)
        if not dest.exists() or not any(dest.iterdir()):
            if dest.exists():
                dest.rmdir()
            os.rename(tmp, dest)
        else:
            for rel in rels:
                target = safe_join(dest, rel)
                if target.is_dir():
                    raise UsageError(f"cannot overwrite the directory {target} with the artifact {rel}")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(safe_join(tmp, rel), target)
    except OSError as exc:
        raise UsageError(f"cannot write into {dest}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / rels[0] if single else dest


def use_dataset(platform: Platform, ctx: Context, run_id: str, spec: str) -> str:
    """Record that the run reads dataset version ``name@N`` (``name`` alone: the latest version); returns
    the dataset reference of the edge dataset -> run (relation "input")."""
    check_run_id(run_id)
    resource = run_ref(run_id)
    platform.authorize(ctx, "run.write", resource)
    m = _DATASET_RE.match(spec) if isinstance(spec, str) else None
    if m is None:
        bad = UsageError(f"{spec!r} is not a dataset version; expected name@N or name (the latest version)")
        raise platform.refuse(ctx, "run.write", resource, bad)
    name, version = m["name"], m["version"]
    with platform.mutate(ctx, "run.write", resource, {"input": spec}) as s:
        _run_row(s, ctx, run_id)
        q = (
            select(DatasetVersion.version)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(Dataset.project_id == ctx.project_id, Dataset.name == name)
        )
        if version is not None:
            q = q.where(DatasetVersion.version == int(version))
        found = s.execute(q.order_by(DatasetVersion.version.desc()).limit(1)).scalar_one_or_none()
        if found is None:
            what = f"dataset {name!r}" + (f" version {version}" if version else "")
            raise NotFoundError(f"{what} not found in project {ctx.project!r}; list them with `yard data ls`")
        ref = dataset_ref(name, int(found))
        add_edges(s, ctx, [(ref, run_ref(run_id), "input")])
    return ref
