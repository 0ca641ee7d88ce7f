"""``yard runs ...``: list, show, compare runs and plot their metrics."""

from __future__ import annotations

import typer

from modelyard.cli._app import app

runs_app = typer.Typer(help="Experiment runs: list, show, compare, metrics.")
app.add_typer(runs_app, name="runs")
