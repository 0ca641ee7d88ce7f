"""``yard quickstart``: the whole lifecycle, offline on a CPU, in a fresh home, with a summary."""

from __future__ import annotations

from pathlib import Path

import typer

from modelyard.cli._app import app, console, err_console


@app.command("quickstart")
def quickstart(
    home: Path = typer.Option(
        Path("yard-quickstart"),
        "--home",
        help="Fresh home to create (recreated if a previous quickstart made it).",
    ),
    steps: int = typer.Option(600, "--steps", min=10, max=100_000, help="Training steps of the tiny model."),
    rows: int = typer.Option(2000, "--rows", min=200, max=1_000_000, help="Generated examples."),
) -> None:
    """Data -> training -> evaluation -> signed registration -> gates -> four-eyes promotion -> INT8
    ONNX -> serving -> requests -> shifted data -> drift -> retraining -> gated canary, step by step."""
    from rich.table import Table
    from rich.text import Text

    from modelyard.cli.registry import _quiet_transformers
    from modelyard.pipelines import Step
    from modelyard.pipelines import quickstart as run

    _quiet_transformers()
    status = err_console.status("starting", spinner="dots")

    def done(s: Step) -> None:
        err_console.print(f"[green]✓[/green] {s.name} ({s.seconds:.0f} s): {s.result}", highlight=False)

    with status:
        result = run(home, steps=steps, rows=rows, on_step=done, say=lambda m: status.update(f"{m} …"))
    table = Table(title=f"yard quickstart: {result.home}")
    for col in ("step", "result", "seconds", "see"):
        table.add_column(col)
    for s in result.steps:
        table.add_row(Text(s.name), Text(s.result), f"{s.seconds:.0f}", Text(s.link))
    console.print(table)
    console.print(
        f"Explore it: export YARD_HOME={result.home} && yard models ls && yard audit verify", markup=False
    )
