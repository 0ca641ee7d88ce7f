"""``yard monitor drift`` (recent traffic against the training data), ``yard monitor run`` (alert rules)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from modelyard.cli._app import acting, app, console, err_console, print_json, table, usage
from modelyard.errors import YardError

if TYPE_CHECKING:
    from modelyard.monitoring._alerts import MonitorResult

monitor_app = typer.Typer(help="Drift, quality and alert rules of served models.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("drift")
def drift(
    spec: str = typer.Argument(..., metavar="NAME@ALIAS"),
    window: str = typer.Option("1h", "--window", help="Recent traffic to compare: 30m, 1h, 7d, ..."),
    html: Path | None = typer.Option(None, "--html", help="Also write an HTML report with plots."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Compare the inputs and outputs served in the window with the version's training data, and its
    quality on feedback with its evaluation (concept drift). Exit 1 if the data drifted."""
    from modelyard.monitoring._monitor import model_drift, parse_window, quality

    span = parse_window(window)
    with acting() as (platform, ctx):
        ref, report, n = model_drift(platform, ctx, spec, window=span)
        q = quality(platform, ctx, spec, window=span)
    if html is not None:
        report.to_html(html, title=f"Drift of {spec} over {window}")
    if json_out:
        print_json(
            {
                "reference": ref.spec,
                "data": ref.data,
                "predictions": n,
                "drift": report.to_dict(),
                "quality": {
                    "examples": q.examples,
                    "metrics": q.metrics,
                    "evaluation": q.reference,
                    "drop": q.drop,
                },
            }
        )
    else:
        table(
            f"{spec}: {n} predictions of the last {window} against the training data of {ref.spec} "
            f"({ref.data})",
            list(report.ROW_HEADER),
            report.rows(),
        )
        if q.examples:
            table(
                f"quality on {q.examples} predictions with feedback",
                ["metric", "now", "at evaluation", "drop"],
                [  # a metric the evaluation did not record has no reference and no drop: "-"
                    (
                        k,
                        f"{v:.4f}",
                        f"{q.reference[k]:.4f}" if k in q.reference else "-",
                        f"{q.drop[k]:+.4f}" if k in q.drop else "-",
                    )
                    for k, v in sorted(q.metrics.items())
                ],
            )
        verdict = "DRIFT" if report.dataset_drifted else "no drift"
        console.print(
            f"{verdict}: {len(report.drifted_columns)} of {len(report.columns)} columns drifted"
            + (f"; report: {html}" if html is not None else ""),
            markup=False,
        )
    if report.dataset_drifted:
        raise typer.Exit(1)


_MAX_INTERVAL_S = 366 * 86400  # a year, as for windows


@monitor_app.command("run")
def run(
    rules: Path = typer.Argument(..., metavar="RULES.yaml"),
    interval: float = typer.Option(0, "--interval", help="Seconds between evaluations (0: once)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Evaluate alert rules (drift, quality, latency) and act: log, webhook, retrain + gate + canary."""
    from modelyard.monitoring._alerts import load_alerts, run_once

    # Before the first evaluation: it records cooldowns and may retrain, and time.sleep refuses NaN.
    if not math.isfinite(interval) or not 0 <= interval <= _MAX_INTERVAL_S:
        raise usage(
            f"--interval {interval:g}: expected seconds from 0 (evaluate once) to {_MAX_INTERVAL_S:,}"
        )
    policy = load_alerts(rules)
    evaluated = False
    while True:
        try:
            with acting() as (platform, ctx):
                result = run_once(platform, ctx, policy)
        except Exception as exc:
            # The first evaluation's failure is the command's (a missing alias, a denied role); a later one
            # (the store restarting, an alias moved mid-promotion) must not end a monitor left running.
            if not evaluated or interval <= 0:
                raise
            message = exc.message if isinstance(exc, YardError) else f"{type(exc).__name__}: {exc}"
            err_console.print(f"error: {message} (evaluating again in {interval:g} s)", markup=False)
        else:
            evaluated = True
            _show(result, json_out)
        if interval <= 0:
            return
        time.sleep(interval)


def _show(result: MonitorResult, json_out: bool) -> None:
    if json_out:
        print_json(
            {
                "model": result.model,
                "signals": result.signals,
                "quiet": result.quiet,
                "retrains": result.retrains,
                "problems": result.problems,
                "unjudged": result.unjudged,
                "fired": [
                    {
                        "rule": f.rule,
                        "when": f.condition,
                        "value": f.value,
                        "actions": f.actions,
                        "retry": f.retry,
                    }
                    for f in result.fired
                ],
            }
        )
        return
    table(
        f"{result.model}: signals",
        ["signal", "value"],
        [(k, f"{v:.4g}") for k, v in sorted(result.signals.items())],
    )
    for f in result.fired:
        console.print(
            f"ALERT {f.rule}{' (retrying what failed)' if f.retry else ''}: {f.condition} "
            f"(value {f.value:.4g}) -> {'; '.join(f.actions)}",
            markup=False,
        )
    for name in result.quiet:
        console.print(f"alert {name} holds but is cooling down", markup=False)
    for line in result.retrains:
        console.print(line, markup=False)
    for line in result.problems:
        console.print(f"warning: {line}", markup=False)
    for line in result.unjudged:
        console.print(line, markup=False)
