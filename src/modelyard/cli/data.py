"""``yard data ...``: dataset versions, diff, checkout, PII scan and anonymisation."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from modelyard.cli._app import acting, app, console, err_console, plain, print_json, region_option, table

data_app = typer.Typer(
    help="Versioned datasets: add, ls, show, diff, checkout, rm, scan, anonymize.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress line that appears only once the work has taken more than a second."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    started = time.monotonic()
    bar: Progress | None = None
    task: Any = None

    def update(files: int, nbytes: int) -> None:
        nonlocal bar, task
        if bar is None:
            if time.monotonic() - started < 1.0 or not err_console.is_terminal:
                return
            bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.fields[files]:,} files, {task.fields[mib]:,.1f} MiB"),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            )
            bar.start()
            task = bar.add_task(what, files=0, mib=0.0)
        bar.update(task, files=files, mib=nbytes / (1 << 20))

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _say(text: str) -> None:
    console.print(plain(text), markup=False)


def _warn(text: str) -> None:
    err_console.print(plain(text), markup=False)


def _number(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.4g}"  # a profile has no mean of values that overflow


@data_app.command("add")
def add(
    path: Path = typer.Argument(..., help="File or directory to version."),
    name: str = typer.Option(..., "--name", "-n", help="Dataset name."),
    message: str = typer.Option("", "--message", "-m", help="What changed in this version."),
    region: str | None = typer.Option(None, help="Region the data belongs to (default: the project's)."),
) -> None:
    """Version PATH as the next version of dataset NAME (nothing new if it equals the latest)."""
    from modelyard.data import add_version

    region = region_option(region)
    with acting() as (platform, ctx), _progress(f"adding {name}") as progress:
        info = add_version(platform, ctx, path, name, message=message, region=region, progress=progress)
    for warning in info.warnings:
        _warn(f"warning: {warning}")
    if info.created:
        _say(f"{info.name}@{info.version}: {info.files:,} files, {_human(info.bytes)}")
    else:
        _say(f"{info.name}@{info.version}: unchanged, no new version")


@data_app.command("ls")
def ls(
    name: str | None = typer.Argument(None, help="List this dataset's versions instead of the datasets."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the project's datasets, or the versions of NAME."""
    from modelyard.data import list_datasets, list_versions

    with acting() as (platform, ctx):
        if name is None:
            datasets = list_datasets(platform, ctx)
        else:
            versions = list_versions(platform, ctx, name)
    if name is None:
        if json_out:
            print_json([vars(d) for d in datasets])
            return
        table(
            None,
            ["dataset", "latest", "versions", "region", "created by"],
            [(d.name, d.latest or "-", d.versions, d.region, d.created_by) for d in datasets],
        )
        return
    if json_out:
        print_json([v.as_dict() for v in versions])
        return
    rows = [
        (
            f"{v.name}@{v.version}",
            v.files,
            _human(v.bytes),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            v.created_by,
            v.message,
        )
        for v in versions
    ]
    table(None, ["version", "files", "size", "created", "by", "message"], rows)


@data_app.command("show")
def show(
    spec: str = typer.Argument(..., metavar="NAME[@VERSION]", help="Dataset version (default: latest)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output (with the profile)."),
    list_files: bool = typer.Option(
        False, "--files", help="List the files instead, as `sha256sum` prints them (checkable with -c)."
    ),
) -> None:
    """Files, size, message, author and the profile of each table of a version."""
    from modelyard.data import files
    from modelyard.data import show as show_version

    with acting() as (platform, ctx):
        if list_files:
            members = files(platform, ctx, spec)
            if json_out:
                print_json([{"path": m.path, "size": m.size, "sha256": m.sha256} for m in members])
            else:  # streamed: a 100k-file version prints as it is read
                for m in members:
                    typer.echo(f"{m.sha256}  {m.path}")
            return
        info = show_version(platform, ctx, spec)
    if json_out:
        print_json(info.as_dict(profile=True))
        return
    _say(f"{info.name}@{info.version}")
    lines = [
        ("files", f"{info.files:,}"),
        ("size", f"{_human(info.bytes)} ({info.bytes:,} bytes)"),
        ("message", info.message or "-"),
        ("author", info.created_by),
        ("created", info.created_at.isoformat(timespec="seconds")),
        ("region", info.region),
        ("manifest", info.manifest_digest),
    ]
    if info.source:
        lines.append(("source", info.source))
    for key, value in lines:
        _say(f"  {key:<9}{value}")
    for path, t in info.profile.get("tables", {}).items():
        rows = []
        for col, c in t.get("columns", {}).items():
            stats = ""
            if c.get("kind") == "numeric" and "mean" in c:
                stats = ", ".join(f"{k} {_number(c[k])}" for k in ("min", "max", "mean"))
            elif "distinct" in c:
                stats = f"{c['distinct']:,} distinct"
                top = c.get("top") or []
                if top:  # the most frequent three, with their counts: what "distinct" alone hides
                    stats += "; top " + ", ".join(f"{v!r} x{n:,}" for v, n in top[:3])
            rows.append((col, c["type"], c["nulls"], stats))
        table(f"{path} ({t.get('rows', 0):,} rows)", ["column", "type", "nulls", "statistics"], rows)
    for path, why in info.profile.get("skipped", {}).items():
        _say(f"  {path}: no statistics ({why})")


@data_app.command("diff")
def diff(
    a: str = typer.Argument(..., metavar="NAME@A"),
    b: str = typer.Argument(..., metavar="NAME@B"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Files added, removed and changed from A to B, and schema/statistics changes of their tables."""
    from modelyard.data import diff as diff_versions

    with acting() as (platform, ctx):
        result = diff_versions(platform, ctx, a, b)
    if json_out:
        print_json(result.as_dict())
        return
    for m in result.added:
        _say(f"+ {m.path}  ({_human(m.size)})")
    for m in result.removed:
        _say(f"- {m.path}  ({_human(m.size)})")
    for x, y in result.changed:
        _say(f"~ {x.path}  ({_human(x.size)} -> {_human(y.size)})")
    for path, change in result.tables.items():
        reasons = change.get("no_statistics")
        if reasons:
            for spec, why in zip((result.a, result.b), reasons, strict=True):
                if why:
                    _say(f"table {path}: no statistics in {spec}: {why}")
            continue
        _say(f"table {path}: rows {change['rows'][0]} -> {change['rows'][1]}")
        for col in change["columns_added"]:
            _say(f"    + column {col}")
        for col in change["columns_removed"]:
            _say(f"    - column {col}")
        for col, (old, new) in change["type_changes"].items():
            _say(f"    ~ column {col}: {old} -> {new}")
        for col, stats in change["stats"].items():
            shown = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in stats.items())
            _say(f"    ~ {col}: {shown}")
    n = len(result.added) + len(result.removed) + len(result.changed)
    _say(
        f"{result.a} -> {result.b}: {len(result.added)} added, {len(result.removed)} removed, "
        f"{len(result.changed)} changed" + ("" if n else " (identical files)")
    )


@data_app.command("checkout")
def checkout(
    spec: str = typer.Argument(..., metavar="NAME@VERSION"),
    dest: Path = typer.Argument(..., metavar="DIR", help="New or empty directory to write the files to."),
) -> None:
    """Write a version's files into DIR, verifying every digest (DIR appears only when all verified)."""
    from modelyard.data import checkout as checkout_version

    with acting() as (platform, ctx), _progress(f"checking out {spec}") as progress:
        info = checkout_version(platform, ctx, spec, dest, progress=progress)
    _say(f"{info.name}@{info.version}: {info.files:,} files, {_human(info.bytes)} verified in {dest}")


@data_app.command("rm")
def rm(
    spec: str = typer.Argument(..., metavar="NAME@VERSION"),
    force: bool = typer.Option(False, "--force", help="Admins only: delete even if a model depends on it."),
) -> None:
    """Delete a version (refused while a registered model depends on it)."""
    from modelyard.data import remove

    with acting() as (platform, ctx):
        info = remove(platform, ctx, spec, force=force)
    for warning in info.warnings:
        _warn(f"warning: {warning}")
    _say(
        f"removed {info.name}@{info.version}; its files stay stored (and readable with the master key) until "
        "an admin runs `yard gc`"
    )


@data_app.command("scan")
def scan(
    spec: str = typer.Argument(..., metavar="NAME@VERSION"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Count PII per table column, text file and file name (values are never printed, names only redacted)."""
    from modelyard.data import scan as scan_version

    with acting() as (platform, ctx):
        report = scan_version(platform, ctx, spec)
    if json_out:
        print_json(report)
        return
    rows: list[tuple[str, str, str, int]] = []
    for path, cols in report["tables"].items():
        for col, kinds in cols.items():
            rows.extend((path, col, kind, n) for kind, n in sorted(kinds.items()))
    for path, kinds in report["files"].items():
        rows.extend((path, "-", kind, n) for kind, n in sorted(kinds.items()))
    for path, kinds in report["names"].items():
        rows.extend((path, "(file name)", kind, n) for kind, n in sorted(kinds.items()))
    if rows:
        table(f"PII in {report['version']}", ["file", "column", "kind", "count"], rows)
    else:
        _say(f"{report['version']}: no PII found")
    for path, why in report["skipped"].items():
        _warn(f"warning: {path} not scanned: {why}")


@data_app.command("anonymize")
def anonymize(
    spec: str = typer.Argument(..., metavar="NAME@VERSION"),
    columns: str | None = typer.Option(
        None, "--columns", help="Comma-separated columns (default: those where PII was found)."
    ),
    method: str = typer.Option("mask", "--method", help="mask, hash (salted, joinable) or drop."),
    message: str | None = typer.Option(None, "--message", "-m"),
    allow_unprocessed: bool = typer.Option(
        False, "--allow-unprocessed", help="Copy unparseable tables and binary files unchanged."
    ),
) -> None:
    """Write a new version with PII masked, hashed or dropped (text files redacted), linked to its source.

    Column names and file names holding PII are redacted too; PII the scan still finds afterwards (in
    columns outside --columns) is listed as a warning."""
    from modelyard.data import anonymize as anonymize_version

    cols = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
    with acting() as (platform, ctx):
        info = anonymize_version(
            platform,
            ctx,
            spec,
            columns=cols,
            method=method,
            message=message,
            allow_unprocessed=allow_unprocessed,
        )
    for warning in info.warnings:
        _warn(f"warning: {warning}")
    _say(f"{info.name}@{info.version}: anonymized from {info.source} ({method})")
