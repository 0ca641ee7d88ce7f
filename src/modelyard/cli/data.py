"""``yard data ...``: dataset versions, diff, checkout, PII scan and anonymisation."""

from __future__ import annotations

import typer

from modelyard.cli._app import app

data_app = typer.Typer(help="Versioned datasets: add, ls, show, diff, checkout, rm, scan, anonymize.")
app.add_typer(data_app, name="data")
