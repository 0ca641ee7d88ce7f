"""Step 8: hyperparameter search with Optuna over the recipe's ``search:`` space.

Each trial is a child run of the study's parent run, trained by the same loop as ``yard train`` with the
trial's values applied as recipe overrides; its objective is the best validation value of
``checkpoints.metric`` (periodic evaluation; the test split is never used to choose). Pruners see every
periodic evaluation.

The study lives in the platform's database so workers on other machines join it (``--study NAME --worker``).
Optuna keeps its own Alembic version table, which would collide with ours, so on PostgreSQL its tables live in
a schema ``optuna`` of the same database; on SQLite (one machine by nature) in ``optuna.db`` beside
``yard.db``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelyard.errors import NotFoundError, UsageError, YardError

log = logging.getLogger("modelyard.training")


class _OurFailedTrials(logging.Filter):
    """Drops Optuna's lines for a trial our objective failed on purpose (it returned NaN: "The value nan is
    not acceptable", "failed with value nan"): the objective has already said why, in words."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "The value nan is not acceptable" not in message and "failed with value nan" not in message


if TYPE_CHECKING:
    from modelyard.core import Platform
    from modelyard.tracking import Client
    from modelyard.training._recipe import Recipe, SearchParam

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband")
#: the most points a grid search may have (every one is a training run)
MAX_GRID = 100_000
_STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


@dataclass
class TuneResult:
    study: str
    parent_run: str
    direction: str
    metric: str
    best_value: float | None
    best_params: dict[str, Any]
    best_run: str | None
    default_value: float | None
    importances: dict[str, float] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)


def storage(platform: Platform) -> Any:
    """Optuna's RDBStorage in the platform's database (see the module docstring for where).

    Running trials beat (Optuna's heartbeat, as the tracking runs do: ``Settings.run_beat_s``); one silent for
    ``run_heartbeat_timeout_s`` (its process died) is failed by the next ``tune`` of its study, instead of
    staying RUNNING forever."""
    import optuna
    from sqlalchemy import text

    from modelyard.core._db import pg_connect_args

    settings = platform.settings
    # Whole seconds (Optuna's type), at least three beats per grace period: a grace period below the
    # interval had the next tune's stale sweep fail trials that were alive.
    interval = max(1, math.floor(settings.run_beat_s))
    grace = max(1, math.ceil(settings.run_heartbeat_timeout_s))
    url = settings.resolved_database_url
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if url.startswith("sqlite"):
            return optuna.storages.RDBStorage(
                f"sqlite:///{settings.home / 'optuna.db'}", heartbeat_interval=interval, grace_period=grace
            )
        if url.startswith("postgresql"):
            with platform.db.engine.begin() as conn:
                conn.execute(text("CREATE SCHEMA IF NOT EXISTS optuna"))
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={
                    "connect_args": {"options": "-csearch_path=optuna", **pg_connect_args(url)},
                    "pool_pre_ping": True,
                },
                heartbeat_interval=interval,
                grace_period=grace,
            )
    raise UsageError(f"hyperparameter search needs SQLite or PostgreSQL, not {url.split(':', 1)[0]}")


def _fail_stale_trials(st: Any) -> None:
    """Fails the study's RUNNING trials whose heartbeat is older than the grace period (Optuna's own check;
    ``optimize`` runs it only before each new trial, so a study with no trial left to run needs this), and
    those that never beat and started longer than the grace period ago: Optuna skips a trial without a
    heartbeat, so one whose process died between creating it and its first beat stayed RUNNING forever. A
    live trial beats at once; only the milliseconds before that are heartbeat-less."""
    import optuna
    from sqlalchemy import text

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(st)
    store = getattr(st._storage, "_backend", st._storage)  # Optuna wraps the RDBStorage in a cache
    if not isinstance(store, optuna.storages.RDBStorage) or store.grace_period is None:
        return
    # datetime_start is the creating process's local time (Optuna writes datetime.now()), and so is this.
    cutoff = datetime.now() - timedelta(seconds=store.grace_period)
    with store.engine.connect() as conn:
        never_beat = conn.execute(
            text(
                "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                "WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.trial_id IS NULL "
                "AND t.datetime_start < :cutoff"
            ),
            {"study": st._study_id, "cutoff": cutoff},
        ).scalars()
        ids = list(never_beat)
    for trial_id in ids:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # ended meanwhile
            st._storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)


def _sampler(name: str, space: dict[str, SearchParam], seed: int | None) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid: dict[str, list[Any]] = {}
        points = 1
        for path, p in space.items():
            if p.type == "categorical":
                n = len(p.choices or [])
            elif p.step is not None and p.low is not None and p.high is not None:
                span = (p.high - p.low) / p.step + 1e-9  # inf for a step of 1e-320
                n = math.floor(span) + 1 if math.isfinite(span) else MAX_GRID + 1
            else:
                raise UsageError(f"--sampler grid needs choices or a step for search.{path}")
            points *= n
            # Counted before any list is built: Optuna materialises the whole product, so a step of 1e-12
            # would otherwise spend minutes and all memory before failing.
            if points > MAX_GRID:
                raise UsageError(
                    f"--sampler grid: the grid has more than {MAX_GRID:,} points ({n:,} values of "
                    f"search.{path}); use a larger step, fewer choices or --sampler tpe"
                )
            if p.type == "categorical":
                grid[path] = list(p.choices or [])
            else:
                assert p.low is not None and p.step is not None
                values = [p.low + i * p.step for i in range(n)]
                grid[path] = [int(v) for v in values] if p.type == "int" else values
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, not {name!r}")


def _pruner(name: str, recipe: Recipe) -> Any:
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        every = recipe.train.eval_every_steps or 1
        return optuna.pruners.HyperbandPruner(
            min_resource=every, max_resource=recipe.hyperparameters.max_steps or "auto"
        )
    raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)}, not {name!r}")


def _suggest(trial: Any, path: str, p: SearchParam) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(path, list(p.choices or []))
    if p.type == "int":
        return trial.suggest_int(path, int(p.low or 0), int(p.high or 0), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(path, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log)


def _get(recipe: Recipe, path: str) -> Any:
    node: Any = recipe
    for part in path.split("."):
        node = getattr(node, part.replace("from", "from_")) if not isinstance(node, dict) else node.get(part)
    return node


def _defaults(recipe: Recipe, space: dict[str, SearchParam]) -> dict[str, Any]:
    """The recipe's own values of the searched keys, where they lie inside the space (trial 0 tries them)."""
    out: dict[str, Any] = {}
    for path, p in space.items():
        value = _get(recipe, path)
        if value is None:
            return {}
        if p.type == "categorical":
            if value not in (p.choices or []):
                return {}
        elif not (p.low is not None and p.high is not None and p.low <= value <= p.high):
            return {}
        out[path] = value
    return out


def tune(
    recipe: Recipe,
    *,
    client: Client,
    recipe_text: str | None = None,
    trials: int,
    sampler: str = "tpe",
    pruner: str = "median",
    study: str | None = None,
    worker: bool = False,
    resume: bool = False,
    seed: int | None = None,
    device: str = "auto",
    timeout: float | None = None,
) -> TuneResult:
    """Run ``trials`` trials (in all, counting every worker's) of ``recipe``'s search space and report the
    best. ``worker=True`` joins the existing ``study`` instead of creating it; ``resume=True`` takes over
    the study this command created before (a retried job whose worker died): its parent run goes on,
    the trials already done count, and the summary is recorded at the end."""
    import optuna

    from modelyard.training._model import check_pretrained
    from modelyard.training._train import Pruned, train

    space = recipe.search
    if not space:
        raise UsageError(
            "the recipe has no search: section; declare the space to search, e.g. "
            "search: {hyperparameters.lr: {type: float, low: 1e-4, high: 1e-2, log: true}}"
        )
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        # Optuna starts no trial past a timeout <= 0 (and never stops at nan): the study would be made and
        # its parent run finished empty
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    if recipe.train.eval_every_steps is None:
        raise UsageError("tuning needs train.eval_every_steps: the objective is the best validation value")
    check_pretrained(recipe)  # before the study and its parent run: every trial would fail
    name = study or f"{recipe.experiment or 'default'}-tune"
    if not _STUDY_RE.match(name):
        raise UsageError(f"study name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    smp, prn = _sampler(sampler, space, seed), _pruner(pruner, recipe)  # bad names fail before any work
    metric = recipe.checkpoints.metric
    direction: Literal["minimize", "maximize"] = (
        "minimize" if recipe.checkpoints.direction == "min" else "maximize"
    )
    store = storage(client.platform)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optimize_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _OurFailedTrials) for f in optimize_log.filters):
        optimize_log.addFilter(_OurFailedTrials())
    experiment = recipe.experiment or "default"
    resource = f"study:{client.ctx.project}/{name}"
    # Before the study is read: a worker also writes it (fails stale trials, records its own trials)
    # before its first child run would be refused.
    client.platform.authorize(client.ctx, "run.write", resource)
    if worker:
        try:
            st = optuna.load_study(study_name=name, storage=store, sampler=smp)
        except KeyError:
            raise NotFoundError(f"study {name!r} not found; start it without --worker first") from None
        parent_id = str(st.user_attrs.get("parent_run", ""))
        if st.user_attrs.get("project") != client.ctx.project or not parent_id:
            raise NotFoundError(f"study {name!r} does not belong to project {client.ctx.project!r}")
        _check_same_search(st, name, metric, direction, space)  # its trials must be comparable
        st.pruner = prn
        parent = None
    elif resume and name in _studies(store):
        # A fresh sampler seed: the one given again would propose the first attempt's values again.
        st = optuna.load_study(study_name=name, storage=store, sampler=smp)
        if seed is not None:
            st.sampler = _sampler(sampler, space, seed + len(st.trials))
        parent_id = str(st.user_attrs.get("parent_run", ""))
        if st.user_attrs.get("project") not in (None, client.ctx.project):
            raise NotFoundError(f"study {name!r} does not belong to project {client.ctx.project!r}")
        if not parent_id:
            raise UsageError(
                f"study {name!r} was created but its parent run never recorded (its process died while "
                "starting it); choose another --study"
            )
        _check_same_search(st, name, metric, direction, space)
        st.pruner = prn
        _fail_stale_trials(st)  # the trials the dead process was running
        if client.get_run(parent_id).status == "FINISHED":  # nothing left to do: the study's outcome
            return _summary(st, name, parent_id, metric, direction)
        parent = client.start_run(run_id=parent_id)  # the creator's parent run, reopened
    else:
        if name in _studies(store):
            raise UsageError(
                f"study {name!r} exists; join it with --worker, take it over with --resume, or choose "
                "another --study"
            )
        parent = client.start_run(
            experiment,
            name=name,
            params={
                "tune.trials": trials,
                "tune.sampler": sampler,
                "tune.pruner": pruner,
                "tune.metric": metric,
            },
            tags={"study": name},
        )
        parent_id = parent.id
        with client.platform.mutate(client.ctx, "run.write", resource, {"parent_run": parent_id}):
            st = optuna.create_study(
                study_name=name,
                storage=store,
                direction=direction,
                sampler=smp,
                pruner=prn,
            )
        st.set_user_attr("parent_run", parent_id)
        st.set_user_attr("project", client.ctx.project)
        st.set_user_attr("metric", metric)
        st.set_user_attr("space", _space_key(space))
        defaults = _defaults(recipe, space)
        if defaults and sampler != "grid":
            st.enqueue_trial(defaults, user_attrs={"defaults": True})

    def objective(trial: optuna.Trial) -> float:
        values = {path: _suggest(trial, path, p) for path, p in space.items()}
        try:
            trial_recipe = recipe.with_overrides(values)
        except UsageError as exc:
            raise optuna.TrialPruned(f"invalid combination: {exc}") from None

        def report(step: int, metrics: dict[str, float]) -> None:
            value = metrics.get(metric)
            if value is None or math.isnan(value):
                return
            trial.report(value, step)
            if trial.should_prune():
                raise Pruned(f"pruned at step {step} ({metric} {value:.4g})")

        result = None
        try:
            result = train(
                trial_recipe,
                client=client,
                recipe_text=None,
                device=device,
                run_name=f"{name}-trial-{trial.number}",
                nested=parent is not None,  # this process's parent run is active
                parent_id=None if parent is not None else parent_id,  # a worker's trials join it by id
                on_eval=report,
                # named as soon as it exists: a failed, pruned or orphaned trial still leads to its run
                on_start=lambda run_id: trial.set_user_attr("run", run_id),
                progress=False,
                final_eval=False,
                tags={"study": name, "trial": trial.number},
            )
        except Pruned as exc:
            raise optuna.TrialPruned(str(exc)) from None
        except YardError as exc:  # this trial's values cannot train (e.g. a batch larger than the data)
            trial.set_user_attr("error", exc.message)
            log.warning("trial %d failed: %s", trial.number, exc.message)
            return math.nan  # Optuna records it FAILED (one line, no traceback) and goes on
        value = result.best.get("value")
        if value is None or math.isnan(value):
            raise UsageError(f"trial {trial.number} produced no {metric} value")
        return float(value)

    callbacks = [
        optuna.study.MaxTrialsCallback(
            trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
    ]
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    _fail_stale_trials(st)  # a worker joining a study also cleans up after dead ones
    left = trials - sum(t.state in counted for t in st.trials)  # a resumed study may be done already
    started = time.monotonic()
    try:
        if left > 0:
            st.optimize(objective, n_trials=left, timeout=timeout, callbacks=callbacks, catch=())
        ran = [t for t in st.trials if t.state != optuna.trial.TrialState.RUNNING]
        if ran and all(t.state == optuna.trial.TrialState.FAIL for t in ran):
            last = ran[-1].user_attrs.get("error", "see its run")
            raise UsageError(f"every trial failed; the last: {last}")
        _fail_stale_trials(st)  # ones that went silent while this process ran its trials
        if parent is not None and not any(t.state == optuna.trial.TrialState.COMPLETE for t in st.trials):
            # No best to report (every trial pruned or failed, or the timeout came first): not a success.
            states = [t.state.name for t in st.trials]
            words = {"PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
            counts = ", ".join(f"{states.count(k)} {w}" for k, w in words.items() if k in states)
            within = ""
            if timeout is not None and time.monotonic() - started >= timeout:
                within = f" within --timeout {timeout:g}s"
            raise UsageError(
                f"no trial completed{within} ({counts or 'none ran'}); the study has no best: "
                + ("raise --timeout" if within else "see the trials' runs for why")
            )
    except BaseException as exc:
        if parent is not None:
            parent.end(
                "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", f"{type(exc).__name__}: {exc}"
            )
        raise
    result = _summary(st, name, parent_id, metric, direction)
    if parent is not None:
        _record(parent, result, recipe_text)
        parent.end("FINISHED")
    return result


def _check_same_search(st: Any, name: str, metric: str, direction: str, space: Any) -> None:
    """A resume or worker must search what the study's creator searched: the same metric, direction and
    space (other trials mixed in would make the best and the sampler's model meaningless)."""
    same = {
        "metric": (st.user_attrs.get("metric"), metric),
        "direction": (st.direction.name.lower(), direction),
        "search space": (st.user_attrs.get("space", _space_key(space)), _space_key(space)),
    }
    differ = [what for what, (was, now) in same.items() if was != now]
    if differ:
        raise UsageError(
            f"study {name!r} was started with another {', '.join(differ)}; run it with its own recipe, or "
            "choose another --study"
        )


def _space_key(space: Any) -> str:
    """The search space as stored with a study (a resume must search the same one)."""
    return json.dumps({k: v.model_dump(mode="json") for k, v in sorted(space.items())}, sort_keys=True)


def _studies(store: Any) -> set[str]:
    import optuna

    return {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}


def _summary(st: Any, name: str, parent_id: str, metric: str, direction: str) -> TuneResult:
    import optuna

    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = st.best_trial if done else None
    defaults = [t for t in done if t.user_attrs.get("defaults")]
    importances: dict[str, float] = {}
    if len(done) >= 2:
        try:
            importances = {k: float(v) for k, v in optuna.importance.get_param_importances(st).items()}
        except (RuntimeError, ValueError):  # e.g. every trial had the same value
            importances = {}
    return TuneResult(
        study=name,
        parent_run=parent_id,
        direction=direction,
        metric=metric,
        best_value=None if best is None else float(best.value),
        best_params={} if best is None else dict(best.params),
        best_run=None if best is None else best.user_attrs.get("run"),
        default_value=float(defaults[0].value) if defaults else None,
        importances=importances,
        trials=[
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": dict(t.params),
                "run": t.user_attrs.get("run"),
            }
            for t in st.trials
        ],
    )


def _record(parent: Any, result: TuneResult, recipe_text: str | None) -> None:
    """The parent run keeps the outcome: best value and params, importances, and a JSON summary."""
    if result.best_value is not None:
        parent.log_metrics({f"best_{result.metric}": result.best_value})
        parent.log_params({f"best.{k}": v for k, v in result.best_params.items()})
        parent.set_tags({"best_run": result.best_run or ""})
    if result.importances:
        parent.log_metrics({f"importance.{k}": v for k, v in result.importances.items()})
    with tempfile.TemporaryDirectory(prefix="yard-tune-") as tmp:
        summary = Path(tmp) / "summary.json"
        body = {k: v for k, v in result.__dict__.items()}
        summary.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
        parent.log_artifact(summary, "tune")
        if recipe_text is not None:
            (Path(tmp) / "recipe.yaml").write_text(recipe_text, encoding="utf-8")
            parent.log_artifact(Path(tmp) / "recipe.yaml")


__all__ = ["PRUNERS", "SAMPLERS", "TuneResult", "storage", "tune"]
