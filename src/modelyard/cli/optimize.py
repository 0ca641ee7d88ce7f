"""``yard optimize NAME@V --target cpu``: ONNX, INT8, pruned and distilled variants, measured, registered."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from modelyard.cli._app import acting, app, console, err_console, print_json, table, usage
from modelyard.cli.registry import _quiet_transformers

if TYPE_CHECKING:
    from modelyard.evaluation import EvalData


def _evaluation_data(data: str, file: str | None, group: str | None, max_samples: int) -> EvalData:
    """``--data``, ``--file`` and ``--group-field`` as EvalData; flags left out stay unset, so the run's
    columns (its group field: the per-slice scores) are used, as ``optimize`` promises."""
    import pydantic

    from modelyard.evaluation import EvalData

    given = {"dataset": data, "file": file, "group_field": group, "max_samples": max_samples}
    try:
        return EvalData.model_validate({k: v for k, v in given.items() if v is not None})
    except pydantic.ValidationError as exc:  # one line naming the flag, not pydantic's report
        flags = {"dataset": "--data", "file": "--file", "group_field": "--group-field"}
        raise usage(
            "; ".join(
                f"{flags.get(str(e['loc'][0]), '--data') if e['loc'] else '--data'}: "
                + str(e["msg"]).removeprefix("Value error, ")
                for e in exc.errors()
            )
        ) from None


@app.command("optimize")
def optimize(
    spec: str = typer.Argument(..., metavar="NAME@V", help="A registered PyTorch version."),
    target: str = typer.Option("cpu", "--target", help="Only cpu for now."),
    quantize: str = typer.Option("int8", "--quantize", help="int8 (dynamic) or none."),
    prune: float | None = typer.Option(None, "--prune", help="Share of weights to prune, e.g. 0.3."),
    structured: bool = typer.Option(False, "--structured", help="Prune whole FFN neurons (smaller, faster)."),
    finetune: Path | None = typer.Option(
        None, "--prune-finetune", help="Recipe for a short recovery fine-tune."
    ),
    distill: Path | None = typer.Option(None, "--distill", help="Student recipe (YAML) to distil into."),
    budget: list[str] = typer.Option(
        ["rougeL=-0.01"], "--budget", help="Largest allowed change, METRIC=DELTA."
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Evaluation data NAME@V (default: the recipe's test); as for the gates, a table not named "
        "test.jsonl (or the one the run cut by ratios) needs --file.",
    ),
    file: str | None = typer.Option(None, "--file", help="Member of --data to evaluate on."),
    group: str | None = typer.Option(None, "--group-field", help="Slice column of --data."),
    max_samples: int = typer.Option(
        200,
        "--max-samples",
        min=1,
        max=100_000,
        help="Examples measured (a seeded sample of the held-out set).",
    ),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1, max=1024),
    threads: int | None = typer.Option(
        None, "--threads", min=1, max=256, help="Inference threads while measuring."
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Make CPU variants of a version, measure each against it on the same examples (quality, p50/p95 at
    batch 1, throughput at batch 16, size), register each as a derived version, and pick the fastest one
    within the accuracy budget."""
    from modelyard.optimize import optimize as run
    from modelyard.training import load_recipe

    if target != "cpu":
        raise usage(f"--target {target!r}: only cpu is supported")
    if quantize not in ("int8", "none"):
        raise usage(f"--quantize {quantize!r}: expected int8 or none")
    evaluation = None
    if data is not None:
        evaluation = _evaluation_data(data, file, group, max_samples)
    elif file is not None or group is not None:
        raise usage("--file and --group-field describe --data NAME@V; give --data too")
    if prune is None and (structured or finetune is not None):
        from modelyard.optimize._pipeline import NO_PRUNE

        raise usage(NO_PRUNE)  # before the recipe is read
    finetune_recipe = load_recipe(finetune) if finetune is not None else None
    student = load_recipe(distill) if distill is not None else None
    _quiet_transformers()

    def say(message: str) -> None:
        if not json_out:
            err_console.print(f"… {message}", markup=False)

    with acting() as (platform, ctx):
        report = run(
            platform,
            ctx,
            spec,
            quantize=quantize == "int8",
            prune=prune,
            structured=structured,
            prune_finetune=finetune_recipe,
            distill=student,
            budget=budget,
            data=evaluation,
            max_samples=max_samples,
            max_new_tokens=max_new_tokens,
            threads=threads,
            progress=say,
        )
    if json_out:
        print_json(report.to_dict())
        return
    keys = sorted(report.budget)
    rows = []
    for m in [report.baseline, *report.variants]:
        picked = report.picked is not None and m.spec == report.picked.spec
        rows.append(
            (
                ("* " if picked else "") + (m.spec or "-"),
                m.variant,
                f"{m.size_mb:,.1f}",
                f"{m.p50_ms:,.1f}",
                f"{m.p95_ms:,.1f}",
                f"{m.throughput:,.1f}",
                f"{m.speedup:.2f}x",
                *[f"{m.metrics[k]:.4f}" + (f" ({m.delta[k]:+.4f})" if m.delta else "") for k in keys],
                "-" if m is report.baseline else ("yes" if m.within_budget else f"no: {m.note}"),
            )
        )
    table(
        f"{report.parent} on {report.data} ({report.examples} examples)",
        ["version", "variant", "MB", "p50 ms", "p95 ms", "seq/s @16", "speed-up", *keys, "in budget"],
        rows,
    )
    # As typed: "rougeL=-0.01", not the dict's "{'rougeL': -0.01}".
    allowed = ", ".join(f"{k}={v:g}" for k, v in sorted(report.budget.items()))
    if report.picked is None:
        console.print(f"no variant is within the budget {allowed}", markup=False)
    else:
        console.print(
            f"picked {report.picked.spec} ({report.picked.variant}): {report.picked.speedup:.2f}x faster at "
            f"batch 1 than {report.parent}, within the budget {allowed}",
            markup=False,
        )
