"""PII scan and anonymisation of dataset versions (detection itself lives in data/_pii.py).

Both work on a verified checkout in private temp space. Scan reports counts only: PII values never
leave this module. Anonymise writes the transformed tree as a new version of the same dataset, linked
to its source (``source_version_id`` and a lineage edge ``anonymized``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modelyard.core._platform import Context, Platform
from modelyard.data import _profile, _versions
from modelyard.errors import UsageError

METHODS = ("mask", "hash", "drop")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".log", ".json", ".xml", ".html", ".yaml", ".yml", ".tsv")


def _is_text(name: str, path: Path) -> bool:
    """Known text suffixes, or any file that decodes as UTF-8 without NUL bytes (sniffed, so a .rst or
    .jsonl-like export is not silently passed over)."""
    if name.lower().endswith(TEXT_SUFFIXES):
        return True
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a cut multi-byte character at the end of the sample is fine
        return exc.start >= len(head) - 3
    return True


def _checkout_tmp(platform: Platform, ctx: Context, spec: str) -> tuple[_versions.VersionInfo, Path, Path]:
    info = _versions.resolve(platform, ctx, spec, version_required=True)
    work = Path(tempfile.mkdtemp(prefix="data-pii-", dir=platform.artifacts.backend.staging_dir()))
    tree = work / "tree"
    try:
        _versions.checkout(platform, ctx, f"{info.name}@{info.version}", tree)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return info, work, tree


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    from modelyard.data._manifest import walk

    for e in walk(root):
        yield e.name, Path(e.path)


def scan(platform: Platform, ctx: Context, spec: str) -> dict[str, Any]:
    """PII counts of a version: ``{"tables": {path: {column: {kind: n}}}, "files": {path: {kind: n}},
    "skipped": {path: reason}}``. Only counts, never the values."""
    from modelyard.data import _pii

    _versions.parse_spec(spec)
    platform.authorize(ctx, "dataset.read", f"dataset:{spec}")
    info, work, tree = _checkout_tmp(platform, ctx, spec)
    out: dict[str, Any] = {"version": f"{info.name}@{info.version}", "tables": {}, "files": {}, "skipped": {}}
    try:
        for name, path in _files(tree):
            fmt = _profile.table_format(name)
            if fmt is not None:
                try:
                    table = _profile.read_table(str(path), fmt)
                except ValueError as exc:
                    out["skipped"][name] = str(exc)
                    continue
                found = {c: dict(k) for c, k in _pii.scan_table(table).items() if any(k.values())}
                if found:
                    out["tables"][name] = found
            elif not _is_text(name, path):
                out["skipped"][name] = "binary file: not scanned"
            else:
                with open(path, encoding="utf-8", errors="replace") as f:
                    counts = {k: n for k, n in _pii.scan_lines(f).items() if n}
                if counts:
                    out["files"][name] = counts
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _write_table(table: Any, path: Path, fmt: str) -> None:
    if fmt == "csv":
        from pyarrow import csv

        csv.write_csv(table, path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import json

        with open(path, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def anonymize(
    platform: Platform,
    ctx: Context,
    spec: str,
    *,
    columns: Sequence[str] | None = None,
    method: str = "mask",
    message: str | None = None,
    allow_unprocessed: bool = False,
) -> _versions.VersionInfo:
    """Write a new version of the dataset with PII removed from ``spec``'s tables (``columns``, or where
    PII was found) by ``method`` (mask, hash with the project's secret salt, or drop) and redacted from
    its text files. The new version records its source and a lineage edge ``anonymized``.

    Fails closed: a table that cannot be parsed or a binary file (compressed, images...) could still hold
    PII, so the whole call is refused, naming them, unless ``allow_unprocessed`` copies them unchanged."""
    from modelyard.data import _pii
    from modelyard.data._secret import project_salt
    from modelyard.tracking._lineage import dataset_ref

    name, _ = _versions.parse_spec(spec)
    if method not in METHODS:
        raise UsageError(f"unknown anonymisation method {method!r}; expected one of {', '.join(METHODS)}")
    cols = [c for c in columns if c] if columns else None
    platform.authorize(ctx, "dataset.write", f"dataset:{name}")
    platform.authorize(ctx, "dataset.read", f"dataset:{spec}")
    salt = project_salt(platform, ctx)  # mask and drop ignore it, but the interface wants one
    info, work, tree = _checkout_tmp(platform, ctx, spec)
    try:
        seen_columns: set[str] = set()
        unprocessed: list[str] = []
        for member, path in _files(tree):
            fmt = _profile.table_format(member)
            if fmt is not None:
                try:
                    table = _profile.read_table(str(path), fmt)
                except ValueError:
                    unprocessed.append(f"{member} (table could not be parsed)")
                    continue
                present = None if cols is None else [c for c in cols if c in table.column_names]
                seen_columns.update(table.column_names)
                if present == []:
                    continue
                _write_table(_pii.anonymize_table(table, present, method, salt), path, fmt)
            elif _is_text(member, path):
                text = path.read_text(encoding="utf-8", errors="replace")
                path.write_text(_pii.redact_text(text), encoding="utf-8")
            else:
                unprocessed.append(f"{member} (binary)")
        missing = sorted(set(cols or ()) - seen_columns)
        if missing:
            raise UsageError(
                f"column(s) {', '.join(missing)} are in no table of {info.name}@{info.version}; "
                f"its columns are: {', '.join(sorted(seen_columns)) or '(no tables)'}"
            )
        if unprocessed and not allow_unprocessed:
            shown = ", ".join(unprocessed[:10]) + (
                f" and {len(unprocessed) - 10} more" if len(unprocessed) > 10 else ""
            )
            raise UsageError(
                f"{info.name}@{info.version}: cannot anonymize (they may hold PII): {shown}; "
                "fix or remove them, or pass --allow-unprocessed to copy them unchanged"
            )
        src_row = _source_id(platform, ctx, info)
        return _versions._add(
            platform,
            ctx,
            tree,
            info.name,
            message=message or f"anonymized {info.name}@{info.version} ({method})",
            region=None,
            source=(src_row, dataset_ref(info.name, info.version)),
            use_cache=False,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _source_id(platform: Platform, ctx: Context, info: _versions.VersionInfo) -> int:
    with platform.db.read() as s:
        _, row = _versions._version_row(s, ctx, info.name, info.version)
        return row.id
