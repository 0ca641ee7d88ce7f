"""Experiment tracking: modelyard against MLflow on the same machine, both on a SQLite backend, one run.

Three questions, each answered in metric points (or searches) per second and as a ratio:

* one call at a time: modelyard's buffered ``Run.log_metric`` for every point, then one ``flush()`` so
  every point is durable before the clock stops; MLflow's ``mlflow.log_metric`` (synchronous, durable
  when it returns) per point;
* batches: modelyard's ``Run.log_metrics`` with ``--batch-size`` keys per call, then ``flush()``; MLflow's
  ``MlflowClient.log_batch`` with the same points per call;
* search: ``--runs`` finished runs (3 params, 3 metrics, 1 tag each; identical ids and values in both
  stores, bulk-loaded untimed), then ``--searches`` timed searches with a filter, an order_by and
  max_results 100: ``Client.search_runs`` against ``MlflowClient.search_runs``. Both must return the same
  run ids in the same order, or the script stops.

MLflow gets fewer points per call-at-a-time and batch measurement by default because it is slower; the
table compares rates, not totals. ``python benchmarks/tracking.py --help`` lists the options to shrink it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform as pyplatform
import random
import statistics
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

FILTER = "metrics.rougeL > 0.3 and params.lr = '1e-4'"
ORDER_BY = ["metrics.rougeL DESC"]
MAX_RESULTS = 100
LRS = ("1e-4", "3e-4", "1e-3", "3e-3")


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


# -- modelyard -----------------------------------------------------------------------------------------------
def yard_platform(home: Path) -> Any:
    from modelyard.testing import make_platform

    p = make_platform(home)
    # No system-metrics thread: it would add points that MLflow does not write.
    return type(p)(p.settings.model_copy(update={"system_metrics_s": 0.0}))


def yard_per_call(platform: Any, n: int) -> float:
    from modelyard.tracking import Client

    with Client(platform=platform) as client, client.start_run("bench", capture=False) as run:
        t0 = time.perf_counter()
        for i in range(n):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
        run.flush()
        return time.perf_counter() - t0


def yard_batches(platform: Any, batches: int, size: int) -> float:
    from modelyard.tracking import Client

    keys = [f"m{k}" for k in range(size)]
    with Client(platform=platform) as client, client.start_run("bench", capture=False) as run:
        t0 = time.perf_counter()
        for b in range(batches):
            run.log_metrics(dict.fromkeys(keys, b * 0.5), step=b)
        run.flush()
        return time.perf_counter() - t0


def yard_load_runs(platform: Any, rows: list[dict[str, Any]]) -> None:
    """Bulk-load finished runs (untimed set-up) straight into the tables the services write."""
    from sqlalchemy import insert

    from modelyard.core._models import Run, RunLatestMetric, RunMetric, RunParam, RunTag
    from modelyard.core._platform import utcnow
    from modelyard.tracking import Client

    with Client(platform=platform) as client, client.start_run("search", capture=False) as first:
        ctx = client.ctx
    with platform.db.read() as s:
        exp_id = s.get(Run, first.id).experiment_id  # type: ignore[union-attr]
    now = utcnow()
    with platform.db.write() as s:
        s.execute(
            insert(Run),
            [
                {
                    "id": r["id"],
                    "project_id": ctx.project_id,
                    "experiment_id": exp_id,
                    "name": r["name"],
                    "status": "FINISHED",
                    "start_time": now,
                    "end_time": now,
                    "heartbeat_at": now,
                    "user": ctx.user,
                    "host": "bench",
                    "pid": None,
                    "reason": None,
                }
                for r in rows
            ],
        )
        s.execute(
            insert(RunParam),
            [{"run_id": r["id"], "key": k, "value": v} for r in rows for k, v in r["params"].items()],
        )
        s.execute(
            insert(RunTag),
            [{"run_id": r["id"], "key": k, "value": v} for r in rows for k, v in r["tags"].items()],
        )
        metrics = [
            {"run_id": r["id"], "key": k, "value": v, "step": 0, "ts": r["ts"]}
            for r in rows
            for k, v in r["metrics"].items()
        ]
        s.execute(insert(RunMetric), metrics)
        s.execute(insert(RunLatestMetric), metrics)
    with platform.db.write() as s:  # the first run is not part of the data set
        s.execute(Run.__table__.delete().where(Run.id == first.id))  # type: ignore[attr-defined]


def yard_search(client: Any) -> list[str]:
    return [r.id for r in client.search_runs("search", FILTER, ORDER_BY, MAX_RESULTS)]


# -- MLflow ------------------------------------------------------------------------------------------------
def mlflow_setup(root: Path) -> Any:
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    client.create_experiment("bench", artifact_location=(root / "mlartifacts").as_uri())
    client.create_experiment("search", artifact_location=(root / "mlartifacts").as_uri())
    return client


def mlflow_per_call(n: int) -> float:
    import mlflow

    mlflow.set_experiment("bench")
    with mlflow.start_run():
        t0 = time.perf_counter()
        for i in range(n):
            mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
        return time.perf_counter() - t0


def mlflow_batches(client: Any, batches: int, size: int) -> float:
    from mlflow.entities import Metric

    exp = client.get_experiment_by_name("bench")
    run = client.create_run(exp.experiment_id)
    keys = [f"m{k}" for k in range(size)]
    t0 = time.perf_counter()
    for b in range(batches):
        ts = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[Metric(k, b * 0.5, ts, b) for k in keys])
    elapsed = time.perf_counter() - t0
    client.set_terminated(run.info.run_id)
    return elapsed


def mlflow_load_runs(client: Any, root: Path, rows: list[dict[str, Any]]) -> None:
    """Bulk-load the same runs through MLflow's own table models (untimed set-up)."""
    from mlflow.store.tracking.dbmodels import models as m
    from sqlalchemy import create_engine, insert

    exp_id = int(client.get_experiment_by_name("search").experiment_id)
    engine = create_engine(f"sqlite:///{root / 'mlflow.db'}")
    with engine.begin() as conn:
        conn.execute(
            insert(m.SqlRun),
            [
                {
                    "run_uuid": r["id"],
                    "name": r["name"],
                    "source_type": "LOCAL",
                    "source_name": "",
                    "entry_point_name": "",
                    "user_id": "bench",
                    "status": "FINISHED",
                    "start_time": r["ts"],
                    "end_time": r["ts"],
                    "source_version": "",
                    "lifecycle_stage": "active",
                    "artifact_uri": f"{root.as_uri()}/mlartifacts/{r['id']}",
                    "experiment_id": exp_id,
                }
                for r in rows
            ],
        )
        conn.execute(
            insert(m.SqlParam),
            [{"run_uuid": r["id"], "key": k, "value": v} for r in rows for k, v in r["params"].items()],
        )
        tags = [{"run_uuid": r["id"], "key": k, "value": v} for r in rows for k, v in r["tags"].items()]
        tags += [{"run_uuid": r["id"], "key": "mlflow.runName", "value": r["name"]} for r in rows]
        conn.execute(insert(m.SqlTag), tags)
        metrics = [
            {"run_uuid": r["id"], "key": k, "value": v, "timestamp": r["ts"], "step": 0, "is_nan": False}
            for r in rows
            for k, v in r["metrics"].items()
        ]
        conn.execute(insert(m.SqlMetric), metrics)
        conn.execute(insert(m.SqlLatestMetric), metrics)
    engine.dispose()


def mlflow_search(client: Any) -> list[str]:
    exp_id = client.get_experiment_by_name("search").experiment_id
    runs = client.search_runs([exp_id], filter_string=FILTER, order_by=ORDER_BY, max_results=MAX_RESULTS)
    return [r.info.run_id for r in runs]


# -- the run -------------------------------------------------------------------------------------------------
def make_rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    base = int(time.time() * 1000)
    return [
        {
            "id": uuid.UUID(int=rnd.getrandbits(128)).hex,
            "name": f"run-{i}",
            "ts": base + i,
            "params": {"lr": LRS[i % 4], "batch_size": str(8 << (i % 3)), "model": "t5-small"},
            "tags": {"stage": f"s{i % 5}"},
            "metrics": {"rougeL": rnd.random() * 0.5, "loss": rnd.random(), "bleu": rnd.random() * 40},
        }
        for i in range(n)
    ]


def timed(fn: Callable[[], list[str]], repeat: int) -> tuple[float, list[str]]:
    fn()  # warm-up: connections, caches, imports
    times, result = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-call", type=int, default=100_000, help="modelyard points, one call each")
    ap.add_argument("--mlflow-per-call", type=int, default=1_000, help="MLflow points, one call each")
    ap.add_argument("--batches", type=int, default=200, help="modelyard batches")
    ap.add_argument("--mlflow-batches", type=int, default=50, help="MLflow batches")
    ap.add_argument("--batch-size", type=int, default=1_000, help="points per batch (MLflow allows 1,000)")
    ap.add_argument("--runs", type=int, default=10_000, help="runs in the search data set")
    ap.add_argument("--searches", type=int, default=5, help="timed searches per tool (median)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    args = ap.parse_args()
    from modelyard.tracking import Client

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    warnings.filterwarnings("ignore")
    console = Console(width=max(120, Console().width))
    results: list[tuple[str, str, float, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="yard-bench-", dir=args.workdir) as tmp:
        root = Path(tmp)
        platform = yard_platform(root / "yard")
        mlclient = mlflow_setup(root)
        try:
            with console.status("one call at a time ..."):
                y = _rate(args.per_call, yard_per_call(platform, args.per_call))
                m = _rate(args.mlflow_per_call, mlflow_per_call(args.mlflow_per_call))
            results.append(("log_metric, one call per point", "points/s", y, "mlflow.log_metric", m))
            with console.status("batches ..."):
                pts = args.batches * args.batch_size
                y = _rate(pts, yard_batches(platform, args.batches, args.batch_size))
                m = _rate(
                    args.mlflow_batches * args.batch_size,
                    mlflow_batches(mlclient, args.mlflow_batches, args.batch_size),
                )
            results.append(
                (f"log_metrics, {args.batch_size:,} per call", "points/s", y, "MlflowClient.log_batch", m)
            )
            with console.status(f"loading {args.runs:,} runs into both stores ..."):
                rows = make_rows(args.runs)
                yard_load_runs(platform, rows)
                mlflow_load_runs(mlclient, root, rows)
            with console.status("search ..."):
                yclient = Client(platform=platform)  # one client per tool, reused, as for MLflow
                ty, ids_y = timed(lambda: yard_search(yclient), args.searches)
                tm, ids_m = timed(lambda: mlflow_search(mlclient), args.searches)
            if ids_y != ids_m:
                raise SystemExit(f"the tools disagree on the search result: {ids_y[:3]} vs {ids_m[:3]}")
            results.append(
                (
                    f"search_runs over {args.runs:,} runs ({len(ids_y)} hits)",
                    "searches/s",
                    1 / ty,
                    "MlflowClient.search_runs",
                    1 / tm,
                )
            )
        finally:
            platform.close()
    table = Table(title=f"tracking: modelyard vs MLflow {_mlflow_version()} (SQLite, same machine, same run)")
    for col in ("measurement", "unit", "modelyard", "MLflow call", "MLflow", "modelyard / MLflow"):
        table.add_column(
            col, justify="right" if col in ("modelyard", "MLflow", "modelyard / MLflow") else "left"
        )
    for what, unit, y, call, m in results:
        table.add_row(what, unit, f"{y:,.1f}", call, f"{m:,.1f}", f"{y / m:,.1f}x")
    console.print(table)
    console.print(
        f"goals: per call >= 20x -> {results[0][2] / results[0][4]:.0f}x; batches > 1x -> "
        f"{results[1][2] / results[1][4]:.1f}x; search >= 10x -> {results[2][2] / results[2][4]:.1f}x. "
        f"filter {FILTER!r}, order_by {ORDER_BY}, max_results {MAX_RESULTS}. "
        f"{pyplatform.python_implementation()} {pyplatform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}"
    )


def _mlflow_version() -> str:
    import mlflow

    return str(mlflow.__version__)


if __name__ == "__main__":
    main()
