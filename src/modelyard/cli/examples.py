"""``yard examples ...``: data for the shipped examples (the offline normalisation task)."""

from __future__ import annotations

from pathlib import Path

import typer

from modelyard.cli._app import acting, app, console, err_console
from modelyard.errors import UsageError

examples_app = typer.Typer(help="Data and helpers for the shipped examples.", no_args_is_help=True)
app.add_typer(examples_app, name="examples")


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _splits(value: str) -> tuple[float, ...]:
    parts = _csv(value) or []
    try:
        if all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
        return tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(
            f"--splits takes three ratios or row counts like 0.8,0.1,0.1 or 1600,200,200, got {value!r}"
        ) from None


@examples_app.command("make-data")
def make_data(
    directory: Path = typer.Argument(..., metavar="DIR", help="New or empty directory for the split files."),
    # Bounded as quickstart's --rows: the rows are made in memory first, and 10^12 of them ran until the
    # memory or the disk gave out (the check below the CLI keeps its own message for negative counts).
    rows: int = typer.Option(2000, "--rows", "-n", max=1_000_000, help="Rows in all splits together."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same rows and same file bytes."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl, csv or parquet."),
    shift: float = typer.Option(
        0.0, "--shift", help="0..1: shifted data for drift tests (rarer locale, longer inputs, noise)."
    ),
    locales: str | None = typer.Option(
        None, "--locales", help="Comma-separated, e.g. en-US,de-DE (default: en-US,en-GB,de-DE,fr-FR,ar-AE)."
    ),
    tasks: str | None = typer.Option(
        None, "--tasks", help="Comma-separated of date,amount,address (default all)."
    ),
    splits: str = typer.Option(
        "0.8,0.1,0.1", "--splits", help="train,validation,test as ratios or row counts."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the split files in a non-empty DIR."),
    version: str | None = typer.Option(
        None, "--version", help="Also version DIR as the next version of this dataset and print NAME@V."
    ),
) -> None:
    """Generate the example normalisation task (dates, amounts, addresses in several locales) into DIR
    as train, validation and test files, with source, target, locale and task columns."""
    import contextlib

    from modelyard.training._exampledata import write_dataset

    with contextlib.ExitStack() as stack:
        # With --version, open the platform and check the name first: a missing home or a bad name fails
        # before any file is written (else the corrected command finds DIR not empty).
        acted = None
        if version is not None:
            from modelyard.data._versions import check_dataset_name

            acted = stack.enter_context(acting())
            check_dataset_name(version)
        paths = write_dataset(
            directory,
            rows,
            seed=seed,
            format=fmt,
            splits=_splits(splits),
            shift=shift,
            locales=_csv(locales),
            tasks=_csv(tasks),
            overwrite=overwrite,
        )
        for path in paths:
            err_console.print(f"wrote {path}", markup=False)
        if acted is None or version is None:
            return
        from modelyard.data import add_version

        platform, ctx = acted
        message = f"yard examples make-data --rows {rows} --seed {seed} --shift {shift:g} --format {fmt}"
        info = add_version(platform, ctx, directory, version, message=message)
    for warning in info.warnings:
        err_console.print(f"warning: {warning}", markup=False)
    console.print(f"{info.name}@{info.version}", markup=False)
