"""`yard tune`: Optuna over the recipe's search space, trials as child runs, the study in the platform's
database (SQLite beside yard.db; a schema of the same PostgreSQL database)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from _tiny import RECIPE  # tests/training/_tiny.py

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.testing import Yard, make_platform
from modelyard.tracking import Client

pytestmark = pytest.mark.slow

SPACE = {
    "hyperparameters.lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True},
    "hyperparameters.warmup_steps": {"type": "int", "low": 0, "high": 4, "step": 2},
}

LR_ONLY = {"type": "float", "low": 0.001, "high": 0.01}


def recipe_file(path: Path, **changes: Any) -> Path:
    recipe = yaml.safe_load(yaml.safe_dump(RECIPE))
    recipe["hyperparameters"]["max_steps"] = 8
    recipe["train"]["eval_every_steps"] = 4
    recipe["checkpoints"]["every_steps"] = 8
    recipe["search"] = SPACE
    recipe.update(changes)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def make_data(yard: Yard, tmp_path: Path) -> None:
    r = yard("examples", "make-data", tmp_path / "norm", "--rows", "300", "--seed", "1", "--version", "norm")
    assert r.code == 0, r.err


def test_eight_trials_as_child_runs_at_least_as_good_as_the_defaults(
    yard: Yard, home: Path, tmp_path: Path
) -> None:
    assert yard("init").code == 0
    make_data(yard, tmp_path)
    recipe = recipe_file(tmp_path / "r.yaml")
    r = yard("tune", recipe, "--trials", "8", "--sampler", "tpe", "--pruner", "none", "--seed", "3", "--json")
    assert r.code == 0, r.err
    result = r.json()
    assert result["metric"] == "loss" and result["direction"] == "minimize"
    values = [t["value"] for t in result["trials"] if t["state"] == "COMPLETE"]
    assert len(values) == 8
    assert len({tuple(sorted(t["params"].items())) for t in result["trials"]}) > 1  # it searched
    # trial 0 is the recipe's own values; the best found is at least as good
    assert result["trials"][0]["params"] == {"hyperparameters.lr": 3e-3, "hyperparameters.warmup_steps": 2}
    assert result["default_value"] == values[0]
    assert result["best_value"] <= result["default_value"]
    assert set(result["importances"]) == set(SPACE)
    with Client() as c:
        parent = c.get_run(result["parent_run"])
        assert parent.status == "FINISHED" and parent.tags["study"] == result["study"]
        assert parent.params["best.hyperparameters.lr"] == str(result["best_params"]["hyperparameters.lr"])
        children = [x for x in c.search_runs("t") if x.parent_id == parent.id]
        assert len(children) == 8 and all(x.status == "FINISHED" for x in children)
        best = c.get_run(result["best_run"])
        assert best.parent_id == parent.id
        assert best.params["hyperparameters.lr"] == str(result["best_params"]["hyperparameters.lr"])
        assert any(name == "tune/summary.json" for name, _, _ in c.list_artifacts(parent.id))


def test_a_worker_joins_the_study_and_the_total_is_capped(yard: Yard, home: Path, tmp_path: Path) -> None:
    assert yard("init").code == 0
    make_data(yard, tmp_path)
    recipe = recipe_file(tmp_path / "r.yaml")
    first = yard("tune", recipe, "--trials", "2", "--sampler", "random", "--study", "s", "--json")
    assert first.code == 0, first.err
    # the same study name again without --worker is refused, nothing runs
    again = yard("tune", recipe, "--trials", "2", "--study", "s")
    assert again.code == 2 and "exists; join it with --worker" in again.error
    joined = yard("tune", recipe, "-n", "3", "--sampler", "random", "--study", "s", "--worker", "--json")
    assert joined.code == 0, joined.err
    trials = joined.json()["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]  # 3 in all: the worker added one
    # a worker with another recipe's space or metric would mix other trials into the study: refused
    space = recipe_file(tmp_path / "space.yaml", search={"hyperparameters.lr": LR_ONLY})
    metric = recipe_file(tmp_path / "metric.yaml", checkpoints={"every_steps": 8, "metric": "bleu"})
    for other, what in ((space, "search space"), (metric, "metric, direction")):
        refused = yard("tune", other, "-n", "5", "--study", "s", "--worker")
        assert refused.code == 2 and f"started with another {what}" in refused.error, refused.err
    parent = first.json()["parent_run"]
    with Client() as c:
        children = [x for x in c.search_runs("t") if x.parent_id == parent]
    assert len(children) == 3


def test_a_study_whose_process_died_is_taken_over_with_resume(yard: Yard, home: Path, tmp_path: Path) -> None:
    # A retried `tune` job (its worker died) runs `yard tune ... --resume` (helper-21: the retry failed at
    # once with "study exists", leaving the parent run without its best).
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from modelyard.training._jobs import cli_argv

    assert yard("init").code == 0
    make_data(yard, tmp_path)
    recipe = recipe_file(tmp_path / "r.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env.update(YARD_HOME=str(home), OMP_NUM_THREADS="1")
    # The dying process is asked for far more trials than it gets to run, so that it cannot finish the study
    # between two polls on a loaded machine; the resume then asks for two more than were complete.
    first = ["tune", str(recipe), "-n", "40", "--sampler", "random", "--study", "d", "--pruner", "none"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", *first],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    progress = (
        "SELECT (SELECT count(*) FROM trials WHERE state = 'COMPLETE'), (SELECT count(*) FROM trials t "
        "JOIN trial_user_attributes a ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'run')"
    )
    deadline = time.monotonic() + 300
    while True:  # until a trial finished and the next one runs, then the process dies mid-trial
        complete = running = 0
        if (home / "optuna.db").exists():
            optuna_db = sqlite3.connect(f"file:{home / 'optuna.db'}?mode=rw", uri=True, timeout=30)
            try:
                complete, running = optuna_db.execute(progress).fetchone()
            except sqlite3.OperationalError:  # the study's tables do not exist yet
                pass
            if complete and running:
                break
            optuna_db.close()
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    args = ["tune", str(recipe), "-n", str(complete + 2), "--sampler", "random", "--study", "d"]
    args += ["--pruner", "none"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The dead trial's heartbeat ages past the grace period (an hour passes, as far as the study can tell).
    with optuna_db:
        aged = optuna_db.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour') "
            "WHERE trial_id IN (SELECT trial_id FROM trials WHERE state = 'RUNNING')"
        )
    assert aged.rowcount == 1  # the trial beat while it ran
    optuna_db.close()
    r = yard(*args, "--resume", "--json")
    assert r.code == 0, r.err
    done = [t for t in r.json()["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == complete + 2 and r.json()["best_value"] is not None
    # the trial the dead process was running is failed by the resume (it stayed RUNNING forever), and names
    # its run
    states = [t["state"] for t in r.json()["trials"]]
    assert "RUNNING" not in states and states.count("FAIL") == 1, r.json()["trials"]
    assert all(t["run"] for t in r.json()["trials"])
    with Client() as c:
        parent = c.get_run(r.json()["parent_run"])
    assert parent.status == "FINISHED" and "best_loss" in parent.metrics
    # a retry of a study that is done runs nothing more; another recipe's space is not searched into it
    again = yard(*args, "--resume", "--json")
    assert again.code == 0 and len(again.json()["trials"]) == len(r.json()["trials"]), again.err
    other = recipe_file(
        tmp_path / "other.yaml",
        search={"hyperparameters.warmup_steps": SPACE["hyperparameters.warmup_steps"]},
    )
    refused = yard("tune", other, "-n", "4", "--study", "d", "--resume")
    assert refused.code == 2 and "started with another search space" in refused.error
    retried = SimpleNamespace(command="tune", args=["-n", "4"], attempts=2, run_id=None)
    assert cli_argv(retried, Path("r.yaml"))[-1] == "--resume"  # type: ignore[arg-type]  # a retried job


def test_a_trial_whose_process_died_before_its_first_heartbeat_is_failed(
    yard: Yard, home: Path, tmp_path: Path
) -> None:
    """A process that dies right after Optuna created its trial (before the trial's first heartbeat) left it
    RUNNING forever: Optuna's stale check only judges trials that beat at least once. One that has not beaten
    for the grace period since it started is failed too; a younger one may be alive and is left alone."""
    import sqlite3

    import optuna

    from modelyard.training._tune import storage

    assert yard("init").code == 0
    make_data(yard, tmp_path)
    recipe = recipe_file(tmp_path / "r.yaml", search={"hyperparameters.lr": LR_ONLY})
    args = ["tune", recipe, "-n", "1", "--sampler", "random", "--pruner", "none", "--study", "o", "--json"]
    assert yard(*args).code == 0
    with Platform(load_settings(home=home)) as platform:
        store = storage(platform)
        study_id = store.get_study_id_from_name("o")
        dead = store.create_new_trial(study_id)
        store.create_new_trial(study_id)  # a young one
    optuna_db = sqlite3.connect(home / "optuna.db")
    with optuna_db:  # the dead one started an hour ago, as far as the study can tell
        optuna_db.execute(
            "UPDATE trials SET datetime_start = datetime(datetime_start, '-1 hour') WHERE trial_id = ?",
            (dead,),
        )
    optuna_db.close()
    r = yard(*args, "--resume")  # the next tune of the study (a resume, a worker) cleans up
    assert r.code == 0, r.err
    states = {t["number"]: t["state"] for t in r.json()["trials"]}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "RUNNING"}
    assert store.get_trial(dead).state == optuna.trial.TrialState.FAIL


def test_a_trial_that_cannot_train_fails_alone_and_the_study_goes_on(
    yard: Yard, home: Path, tmp_path: Path
) -> None:
    # batch_size 300 passes validation but is more than the 240 training rows: that trial fails at run time
    assert yard("init").code == 0
    make_data(yard, tmp_path)
    recipe = recipe_file(
        tmp_path / "r.yaml",
        search={"hyperparameters.batch_size": {"type": "categorical", "choices": [8, 300]}},
    )
    r = yard(
        "tune", recipe, "--trials", "4", "--sampler", "random", "--seed", "0", "--pruner", "none", "--json"
    )
    assert r.code == 0, r.err
    states = {t["params"]["hyperparameters.batch_size"]: t["state"] for t in r.json()["trials"]}
    assert states == {8: "COMPLETE", 300: "FAIL"}, r.json()["trials"]
    # every trial names its run, the failed one too: its logs and reason are found from the summary
    with Client() as c:
        runs = {t["state"]: c.get_run(t["run"]) for t in r.json()["trials"]}
    assert runs["FAIL"].status == "FAILED" and "240 training rows" in (runs["FAIL"].reason or "")
    assert runs["COMPLETE"].status == "FINISHED"
    assert r.json()["best_params"] == {"hyperparameters.batch_size": 8}
    only_bad = recipe_file(
        tmp_path / "bad.yaml",
        search={"hyperparameters.batch_size": {"type": "categorical", "choices": [300]}},
    )
    r = yard("tune", only_bad, "--trials", "2", "--pruner", "none", "--study", "bad")
    assert r.code == 2 and "error: every trial failed; the last: 240 training rows" in r.err
    assert "Traceback" not in r.err, r.err


def test_a_search_in_which_no_trial_completed_fails_and_says_so(
    yard: Yard, home: Path, tmp_path: Path
) -> None:
    """--timeout can run out before any trial completes (here every trial is pruned: 4 heads do not divide
    d_model 34). That ended as a FINISHED parent run with no best, reported as a success."""
    assert yard("init").code == 0
    make_data(yard, tmp_path)
    space = {
        "model.config.d_model": {"type": "categorical", "choices": [34]},
        "model.config.num_heads": {"type": "categorical", "choices": [4]},
    }
    recipe = recipe_file(tmp_path / "r.yaml", search=space)
    for study, extra, why in (
        ("timed", ["--timeout", "0.01"], "no trial completed within --timeout 0.01s (1 pruned)"),
        ("all-pruned", [], "no trial completed (2 pruned)"),
    ):
        r = yard("tune", recipe, "--trials", "2", "--sampler", "random", "--study", study, *extra)
        assert r.code == 2 and why in r.error, r.err
        with Client() as c:
            (parent,) = [
                x for x in c.search_runs("t") if x.tags.get("study") == study and x.parent_id is None
            ]
        assert parent.status == "FAILED" and why in (parent.reason or ""), parent


@pytest.mark.parametrize(
    ("args", "changes", "message"),
    [
        (["--trials", "0"], {}, "--trials must be at least 1"),
        (["--sampler", "annealing"], {}, "--sampler must be one of"),
        (["--pruner", "asha"], {}, "--pruner must be one of"),
        (["--study", "../x"], {}, "study name '../x'"),
        (["--study", "nope", "--worker"], {}, "study 'nope' not found"),
        ([], {"search": None}, "no search: section"),
        # Optuna starts no trial past a timeout of 0 or less (nor stops at nan): the study would be made and
        # its parent run finished with nothing in it
        (["--timeout", "0"], {}, "--timeout must be a positive number of seconds"),
        (["--timeout", "nan"], {}, "--timeout must be a positive number of seconds"),
        (["--sampler", "grid"], {"search": {"hyperparameters.lr": LR_ONLY}}, "grid needs choices or a step"),
        (  # counted before Optuna builds the product, which would take minutes and all memory
            ["--sampler", "grid"],
            {"search": {"hyperparameters.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": 1e-12}}},
            "the grid has more than 100,000 points",
        ),
        (  # a step so small the count is infinite: refused the same way, not an OverflowError
            ["--sampler", "grid"],
            {"search": {"hyperparameters.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": 1e-320}}},
            "the grid has more than 100,000 points",
        ),
    ],
)
def test_bad_tune_requests_fail_before_any_trial(
    yard: Yard, home: Path, tmp_path: Path, args: list[str], changes: dict[str, Any], message: str
) -> None:
    assert yard("init").code == 0
    make_data(yard, tmp_path)
    recipe = recipe_file(tmp_path / "r.yaml", **changes)
    r = yard("tune", recipe, *args)
    assert r.code in (1, 2) and message in r.error
    with Client() as c:
        assert c.search_runs("t") == []


@pytest.mark.postgres
def test_study_lives_in_its_own_schema_of_the_platform_database(
    yard: Yard, postgres_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "pg-home"
    make_platform(home, database_url=postgres_url).close()
    env: dict[str, str | None] = {"YARD_HOME": str(home), "YARD_DATABASE_URL": postgres_url}
    r = yard("examples", "make-data", tmp_path / "d", "-n", "300", "--version", "norm", env=env)
    assert r.code == 0, r.err
    recipe = recipe_file(tmp_path / "r.yaml")
    r = yard("tune", recipe, "--trials", "2", "--study", "pg", "--json", env=env)
    assert r.code == 0, r.err
    import optuna

    from modelyard.training._tune import storage

    with Platform(load_settings(home=home, database_url=postgres_url)) as platform:
        summaries = optuna.get_all_study_summaries(storage(platform), include_best_trial=False)
        assert [s.study_name for s in summaries] == ["pg"] and summaries[0].n_trials == 2
        from sqlalchemy import text

        with platform.db.engine.connect() as conn:
            ours = conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar()
            theirs = conn.execute(text("SELECT count(*) FROM optuna.trials")).scalar()
        from modelyard.core._db import HEAD_REVISION

        assert ours == HEAD_REVISION and theirs == 2  # ours stays in public, at our head


def test_trials_beat_at_least_three_times_per_grace_period(tmp_path: Path) -> None:
    """A heartbeat timeout set below the heartbeat interval (to notice dead trials sooner) had live trials
    miss their grace period between two beats, and the next tune's stale sweep failed them."""
    from modelyard.training._tune import storage

    with make_platform(tmp_path / "home") as platform:
        for timeout, interval in ((6.0, 2), (60.0, 10), (2.0, 1)):
            settings = platform.settings.model_copy(update={"run_heartbeat_timeout_s": timeout})
            with Platform(settings) as p:
                store = storage(p)
                assert (store.heartbeat_interval, store.grace_period) == (interval, math.ceil(timeout))
