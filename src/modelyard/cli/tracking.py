"""``yard runs ...``: list, show, compare runs and plot their metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from modelyard.cli._app import acting, app, console, err_console, print_json, table

runs_app = typer.Typer(help="Experiment runs: list, show, compare, metrics.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    return str(value)


@runs_app.command("ls")
def ls(
    experiment: list[str] | None = typer.Option(None, "--experiment", "-e", help="Only these experiments."),
    filter_: str | None = typer.Option(
        None, "--filter", "-f", help="e.g. \"metrics.rougeL > 0.3 and params.lr = '1e-4'\"."
    ),
    order_by: list[str] | None = typer.Option(None, "--order-by", "-o", help="e.g. 'metrics.loss ASC'."),
    max_results: int = typer.Option(100, "--max", min=1, max=50_000, help="At most this many runs."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List runs, newest first (or by --order-by), optionally filtered."""
    from modelyard.tracking._search import search_runs

    with acting() as (platform, ctx):
        runs = search_runs(platform, ctx, experiment or None, filter_, order_by or None, max_results)
    if json_out:
        print_json([r.to_dict() for r in runs])
        return
    metric_keys = sorted({k for r in runs for k in r.metrics if not k.startswith("system/")})[:6]
    rows = [
        [r.id[:12], r.experiment, r.name, r.status, _fmt(r.start_time)]
        + [_fmt(r.metrics.get(k)) for k in metric_keys]
        for r in runs
    ]
    table(f"runs ({len(runs)})", ["run", "experiment", "name", "status", "started", *metric_keys], rows)


@runs_app.command("show")
def show(
    run: str = typer.Argument(..., help="Run id (or a unique prefix of 6+ characters)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """A run's attributes, params, tags, latest metrics and artifacts."""
    from modelyard.tracking._store import get_run, list_run_artifacts, resolve_run_id

    with acting() as (platform, ctx):
        run_id = resolve_run_id(platform, ctx, run)
        info = get_run(platform, ctx, run_id)
        artifacts = list_run_artifacts(platform, ctx, run_id)
    if json_out:
        print_json(
            {**info.to_dict(), "artifacts": [{"path": p, "digest": d, "size": n} for p, d, n in artifacts]}
        )
        return
    attrs = [
        ("id", info.id),
        ("experiment", info.experiment),
        ("name", info.name),
        ("status", info.status),
        ("reason", info.reason),
        ("parent", info.parent_id),
        ("user", info.user),
        ("host", info.host),
        ("started", _fmt(info.start_time)),
        ("ended", _fmt(info.end_time)),
    ]
    table(f"run {info.id}", ["attribute", "value"], [(k, v) for k, v in attrs if v])
    if info.params:
        table("params", ["key", "value"], sorted(info.params.items()))
    if info.metrics:
        table("metrics (latest)", ["key", "value"], [(k, _fmt(v)) for k, v in sorted(info.metrics.items())])
    if info.tags:
        table("tags", ["key", "value"], sorted(info.tags.items()))
    if artifacts:
        table("artifacts", ["path", "digest", "bytes"], artifacts)


@runs_app.command("compare")
def compare(
    runs: list[str] = typer.Argument(..., help="Two or more run ids (or unique prefixes)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Params and latest metrics of runs side by side; params that differ are marked with *."""
    from modelyard.errors import UsageError
    from modelyard.tracking._store import get_run, resolve_run_id

    if len(runs) < 2:
        raise UsageError("yard runs compare needs two or more runs; to see one run use `yard runs show RUN`")
    with acting() as (platform, ctx):
        infos = [get_run(platform, ctx, resolve_run_id(platform, ctx, r)) for r in runs]
    params = sorted({k for r in infos for k in r.params})
    metrics = sorted({k for r in infos for k in r.metrics})
    if json_out:
        print_json(
            {
                "runs": [r.id for r in infos],
                "params": {k: [r.params.get(k) for r in infos] for k in params},
                "metrics": {k: [r.metrics.get(k) for r in infos] for k in metrics},
            }
        )
        return
    rows: list[list[str]] = [["status", *(r.status for r in infos)]]
    for k in params:
        values = [r.params.get(k) for r in infos]
        mark = " *" if len(set(values)) > 1 else ""
        rows.append([f"params.{k}{mark}", *(_fmt(v) for v in values)])
    rows += [[f"metrics.{k}", *(_fmt(r.metrics.get(k)) for r in infos)] for k in metrics]
    table("compare", ["", *(r.id[:12] for r in infos)], rows)


@runs_app.command("metrics")
def metrics(
    run: str = typer.Argument(..., help="Run id (or a unique prefix of 6+ characters)."),
    key: list[str] | None = typer.Option(None, "--key", "-k", help="Only these metric keys."),
    plot: bool = typer.Option(False, "--plot", help="Write a PNG of the curves (needs matplotlib)."),
    output: Path | None = typer.Option(
        None, "--output", help="PNG path (default metrics-<run>.png); implies --plot."
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Summarise a run's metric histories; --plot draws them to a PNG."""
    from modelyard.errors import UsageError
    from modelyard.tracking._store import metric_history, resolve_run_id

    with acting() as (platform, ctx):
        run_id = resolve_run_id(platform, ctx, run)
        history = metric_history(platform, ctx, run_id, key or None)
    if key:
        missing = [k for k in key if k not in history]
        if missing:
            raise UsageError(f"run {run_id} has no metric {missing[0]!r}; see `yard runs show {run_id[:12]}`")
    if json_out:
        print_json({k: [p._asdict() for p in points] for k, points in history.items()})
    else:
        rows = []
        for k, points in history.items():
            values = [p.value for p in points if p.value is not None]
            last = points[-1]
            rows.append(
                [
                    k,
                    len(points),
                    _fmt(min(values) if values else None),
                    _fmt(max(values) if values else None),
                    _fmt(last.value),
                    last.step,
                ]
            )
        table(f"metrics of run {run_id}", ["key", "points", "min", "max", "last", "last step"], rows)
    if plot or output is not None:  # --output alone was ignored: no PNG and no word said
        if not history:
            raise UsageError(f"run {run_id} has no metrics to plot")
        path = output or Path(f"metrics-{run_id[:12]}.png")
        _plot(history, path, run_id)
        # With --json, stdout holds the JSON document alone.
        (err_console if json_out else console).print(f"wrote {path}", markup=False)


def _plot(history: dict[str, Any], path: Path, run_id: str) -> None:
    import io

    from modelyard.core._paths import write_file
    from modelyard.errors import UsageError

    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'modelyard[train]' or matplotlib") from None
    keys = list(history)
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.6 * len(keys)), squeeze=False)
    try:
        for ax, k in zip(axes[:, 0], keys, strict=True):
            points = [p for p in history[k] if p.value is not None]
            # Markers for short series: a single point is invisible as a line.
            marker = "o" if len(points) <= 50 else None
            ax.plot([p.step for p in points], [p.value for p in points], linewidth=1.2, marker=marker)
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.suptitle(f"run {run_id}", fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    try:
        write_file(path, buf.getvalue())
    except OSError as exc:
        raise UsageError(f"cannot write --output {path}: {exc.strerror or exc}") from None
