"""PII scan and anonymisation of dataset versions (detection itself lives in data/_pii.py).

Both work on a verified checkout in private temp space. Scan reports counts only: PII values never
leave this module, and every member path and column name it reports is redacted first. Anonymise writes
the transformed tree as a new version of the same dataset, linked to its source (``source_version_id``
and a lineage edge ``anonymized``).

Tables are read as the text that was written (CSV cells and JSON numbers are never type-inferred), so
"0501234567" is a phone number, not the integer 501234567, and a cell that is not redacted is written
back exactly as it was. A member with nothing to change keeps its bytes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from modelyard.core._platform import Context, Platform
from modelyard.data import _profile, _versions
from modelyard.errors import UsageError, YardError

METHODS = ("mask", "hash", "drop")
_NAME_MAX = 255  # bytes a file name may have (Linux, macOS)
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


def _name_findings(member: str) -> tuple[str, dict[str, int]]:
    """A member path as reports may show it and anonymise renames it (PII becomes ``[EMAIL]``), and
    what was found in it. A file named after its owner ("alice@example.com.txt") reads as an address
    whose domain ends in ".txt", which the text scan rejects, so a segment is also scanned without
    its extension."""
    from modelyard.data._pii import redact_text, scan_text

    parts: list[str] = []
    found: dict[str, int] = {}
    for segment in member.split("/"):
        stem, dot, ext = segment.rpartition(".")
        text, tail = (segment, "") if scan_text(segment) or not stem else (stem, dot + ext)
        for kind, n in scan_text(text).items():
            found[kind] = found.get(kind, 0) + n
        parts.append(redact_text(text, "[{}]") + tail)
    return "/".join(parts), found


def _shown(member: str) -> str:
    return _name_findings(member)[0]


def _unreadable(fmt: str, exc: BaseException) -> ValueError:
    # Parser messages quote the offending row (PII), so only the kind of failure is said.
    return ValueError(
        f"cannot read it as {fmt} ({type(exc).__name__}; the parser's message may quote the data)"
    )


def _read_csv(path: Path) -> Any:
    """Every cell as the text written, the header as row 0: no inference, so "00123" keeps its zeros."""
    import pyarrow as pa
    from pyarrow import csv

    read = csv.ReadOptions(autogenerate_column_names=True)
    try:
        with csv.open_csv(path, read_options=read) as reader:  # its first block gives the column count
            names = reader.schema.names
        types = csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
        table = csv.read_csv(path, read_options=read, convert_options=types)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable("csv", exc) from None
    header = [str(v) for v in table.slice(0, 1).to_pylist()[0].values()]
    return table.slice(1).rename_columns(header)


def _write_csv(table: Any, path: Path, original: bytes) -> None:
    """``table`` (all strings) as CSV in ``original``'s form: values bare unless one needs quotes, its
    line ending, byte-order mark and final newline. Written here, not by pyarrow, which quotes every
    string once one needs quotes; nor by the csv module, which leaves a "\r" in a value bare when
    lines end in "\n"."""
    ending = b"\r\n" if original.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    single = table.num_columns == 1  # a lone empty value must read as a row, not a blank line

    def cell(value: str | None) -> str:
        if not value:
            return '""' if single else ""
        if any(c in value for c in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    lines = [",".join(map(cell, table.column_names)).encode()] if table.num_columns else []
    columns = [c.to_pylist() for c in table.columns]
    lines += [",".join(map(cell, row)).encode() for row in zip(*columns, strict=True)]
    data = b"".join(line + ending for line in lines)
    if not original.endswith(b"\n"):
        data = data.removesuffix(ending)
    if original.startswith(b"\xef\xbb\xbf"):
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(data)


def _jsonl_records(data: bytes) -> Iterator[tuple[bytes, dict[str, Any] | None]]:
    """Each line as written with its object (``None`` for a blank line); ValueError naming the first
    line that is not a JSON object, never its content."""
    from modelyard.data._pii import parse_json

    for n, line in enumerate(data.splitlines(keepends=True), 1):
        if not line.strip():
            yield line, None
            continue
        try:
            record = parse_json(line.decode("utf-8").lstrip("\ufeff"))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"cannot read it as jsonl: line {n} is not a JSON object in UTF-8")
        yield line, record


def _scan_table_file(path: Path, fmt: str) -> dict[str, dict[str, int]]:
    from modelyard.data import _pii

    if fmt == "jsonl":
        return _pii.scan_records(r for _, r in _jsonl_records(path.read_bytes()) if r is not None)[0]
    return _pii.scan_table(_read_csv(path) if fmt == "csv" else _read_parquet(path))


def _read_parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable("parquet", exc) from None


def _scan_tree(tree: Path) -> dict[str, Any]:
    from modelyard.data import _pii

    out: dict[str, Any] = {"tables": {}, "files": {}, "names": {}, "skipped": {}}
    for name, path in _files(tree):
        shown, found_in_name = _name_findings(name)
        if found_in_name:
            out["names"][shown] = found_in_name
        fmt = _profile.table_format(name)
        if fmt is not None and path.stat().st_size == 0:  # an empty export: nothing to parse or find
            continue
        if fmt is not None:
            try:
                found = _scan_table_file(path, fmt)
            except ValueError as exc:
                out["skipped"][shown] = str(exc)
                continue
            if found:
                out["tables"][shown] = found
        elif not _is_text(name, path):
            out["skipped"][shown] = "binary file: not scanned"
        else:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                counts = {k: n for k, n in _pii.scan_lines(f).items() if n}
            if counts:
                out["files"][shown] = counts
    return out


def scan(platform: Platform, ctx: Context, spec: str) -> dict[str, Any]:
    """PII counts of a version: ``{"tables": {path: {column: {kind: n}}}, "files": {path: {kind: n}},
    "names": {path: {kind: n}}, "skipped": {path: reason}}``. Only counts, never the values: paths and
    column names are shown redacted, findings in a column name count under ``(header)`` and findings
    in a member's path under ``names``."""
    _versions.parse_spec(spec)
    platform.authorize(ctx, "dataset.read", f"dataset:{spec}")
    info, work, tree = _checkout_tmp(platform, ctx, spec)
    try:
        return {"version": f"{info.name}@{info.version}", **_scan_tree(tree)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _anonymize_table_file(
    path: Path, fmt: str, columns: list[str] | None, method: str, salt: bytes
) -> set[str]:
    """Anonymise one table in place (untouched when nothing changes); its column names."""
    from modelyard.data import _pii

    if fmt == "jsonl":
        data = path.read_bytes()
        _, found = _pii.scan_records(r for _, r in _jsonl_records(data) if r is not None)
        seen: set[str] = set()
        out: list[bytes] = []
        fn = _pii.cell_function(method, salt)
        for line, record in _jsonl_records(data):
            if record is not None:
                seen.update(record)
                chosen = found if columns is None else columns
                new = _pii.anonymize_record(record, chosen, fn)
                if new != record:
                    ending = line[len(line.rstrip(b"\r\n")) :]
                    line = _pii.dump_json(new).encode("utf-8") + ending
            out.append(line)
        new_data = b"".join(out)
        if new_data != data:
            path.write_bytes(new_data)
        return seen
    table = _read_csv(path) if fmt == "csv" else _read_parquet(path)
    present = None if columns is None else [c for c in columns if c in table.column_names]
    new = _pii.anonymize_table(table, present, method, salt)
    if new is not table:
        if fmt == "csv":
            _write_csv(new, path, path.read_bytes())
        else:
            import pyarrow.parquet as pq

            pq.write_table(new, path)
    return set(table.column_names)


def _redact_text_file(path: Path) -> None:
    """Redact a text file in place, keeping every other byte: line endings and non-UTF-8 bytes too."""
    from modelyard.data._pii import redact_text

    data = path.read_bytes()
    text = data.decode("utf-8", errors="surrogateescape")
    redacted = redact_text(text)
    if redacted != text:
        path.write_bytes(redacted.encode("utf-8", errors="surrogateescape"))


def _rename_members(tree: Path) -> list[str]:
    """Rename members whose path holds PII to the redacted path (``[EMAIL].txt``); their new names."""
    files = sorted(_files(tree))
    renamed = [(name, path) for name, path in files if _shown(name) != name]
    taken = {name for name, _ in files if _shown(name) == name}
    dirs = {d for name in taken for d in _parents(name)}
    moves = []
    for name, path in renamed:  # one file per person or host redacts to one name: number them, lose none
        new = _free(_shown(name), taken, dirs)
        taken.add(new)
        dirs.update(_parents(new))
        moves.append((path, new))
    targets = [new for _, new in moves]
    for path, new in moves:
        target = tree / new
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
        parent = path.parent
        while parent != tree and not any(parent.iterdir()):  # the old directory, now empty
            parent.rmdir()
            parent = parent.parent
    return targets


def _parents(name: str) -> set[str]:
    parts = name.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def _free(name: str, taken: set[str], dirs: set[str]) -> str:
    """``name``, with each segment that meets another member numbered (``stem_2.ext``, ``stem_3.ext``...):
    a directory where a file is, or a file where a file or directory is."""
    parts = name.split("/")
    for i, segment in enumerate(map(PurePosixPath, parts)):
        n = 1
        parts[i] = _numbered(segment, n)
        while (prefix := "/".join(parts[: i + 1])) in taken or (i == len(parts) - 1 and prefix in dirs):
            n += 1
            parts[i] = _numbered(segment, n)
    return "/".join(parts)


def _numbered(segment: PurePosixPath, n: int) -> str:
    """``stem_N.ext`` (``stem.ext`` for 1), cut to the 255 bytes a name may have from the start of its
    stem, which keeps the placeholders at the end: one is longer than some of what it replaces ("a@b.io"
    is "[EMAIL]"), so a name near the limit grows past it."""
    stem, tail = segment.stem, (f"_{n}" if n > 1 else "") + segment.suffix
    while stem and len(os.fsencode(stem + tail)) > _NAME_MAX:
        stem = stem[1:]
    out = stem + tail
    while len(os.fsencode(out)) > _NAME_MAX:  # a long extension, cut too
        out = out[:-1]
    return out


def _residual(report: dict[str, Any], columns: list[str] | None) -> list[str]:
    """Warnings for PII a scan still finds after anonymising: counts per place, never values."""

    def counts(kinds: dict[str, int]) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))

    why = " (not in --columns)" if columns is not None else ""
    out = [
        f"PII remains in {member}, column {col}: {counts(kinds)}{why}"
        for member, cols in report["tables"].items()
        for col, kinds in cols.items()
    ]
    out += [f"PII remains in {member}: {counts(kinds)}" for member, kinds in report["files"].items()]
    out += [
        f"PII remains in the name of {member}: {counts(kinds)}" for member, kinds in report["names"].items()
    ]
    return out


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
    from modelyard.data._secret import project_salt
    from modelyard.tracking._lineage import dataset_ref

    name, _ = _versions.parse_spec(spec)
    resource = f"dataset:{name}"
    platform.authorize(ctx, "dataset.write", resource)
    platform.authorize(ctx, "dataset.read", f"dataset:{spec}")
    work: Path | None = None
    try:
        try:  # the add audits its own refusals; these are audited here, as any refused mutation is
            cols = _column_list(columns)
            if method not in METHODS:
                raise UsageError(
                    f"unknown anonymisation method {method!r}; expected one of {', '.join(METHODS)}"
                )
            salt = project_salt(platform, ctx)  # mask and drop ignore it, but the interface wants one
            info, work, tree = _checkout_tmp(platform, ctx, spec)
            warnings = _transform(tree, info, cols, method, salt, allow_unprocessed)
            src_row = _source_id(platform, ctx, info)
        except YardError as exc:
            raise platform.refuse(ctx, "dataset.write", resource, exc) from None
        new = _versions._add(
            platform,
            ctx,
            tree,
            info.name,
            message=message or f"anonymized {info.name}@{info.version} ({method})",
            region=None,
            source=(src_row, dataset_ref(info.name, info.version)),
            use_cache=False,
        )
        return dataclasses.replace(new, warnings=new.warnings + tuple(warnings))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _column_list(columns: Sequence[str] | None) -> list[str] | None:
    """The chosen columns (None: those where PII was found); a str would be read a letter at a time."""
    if columns is None:
        return None
    wrong = UsageError("columns must be a list of column names, such as ['email', 'phone']")
    if isinstance(columns, str | bytes):
        raise wrong
    try:
        chosen = list(columns)
    except TypeError:
        raise wrong from None
    if not all(isinstance(c, str) for c in chosen):
        raise wrong
    named = [c for c in chosen if c]
    if not named:  # an empty --columns (",,") is no way to ask for the default: nothing would say so
        raise UsageError("columns names no column; give at least one, or none at all for those holding PII")
    return named


def _transform(
    tree: Path,
    info: _versions.VersionInfo,
    cols: list[str] | None,
    method: str,
    salt: bytes,
    allow_unprocessed: bool,
) -> list[str]:
    """Anonymise the checkout ``tree`` in place; the warnings to give with the new version."""
    from modelyard.data import _pii

    seen_columns: set[str] = set()
    unprocessed: list[str] = []
    for member, path in _files(tree):
        fmt = _profile.table_format(member)
        if fmt is not None and path.stat().st_size == 0:  # nothing to redact, though not a valid table
            continue
        if fmt is not None:
            try:
                seen_columns.update(_anonymize_table_file(path, fmt, cols, method, salt))
            except ValueError:
                unprocessed.append(f"{_shown(member)} (table could not be parsed)")
        elif _is_text(member, path):
            _redact_text_file(path)
        else:
            unprocessed.append(f"{_shown(member)} (binary)")
    missing = sorted(set(cols or ()) - seen_columns)
    if missing:
        shown_columns = sorted({_pii.redact_text(c) for c in seen_columns})
        raise UsageError(
            f"column(s) {', '.join(missing)} are in no table of {info.name}@{info.version}; "
            f"its columns are: {', '.join(shown_columns) or '(no tables)'}"
        )
    if unprocessed and not allow_unprocessed:
        shown = ", ".join(unprocessed[:10]) + (
            f" and {len(unprocessed) - 10} more" if len(unprocessed) > 10 else ""
        )
        raise UsageError(
            f"{info.name}@{info.version}: cannot anonymize (they may hold PII): {shown}; "
            "fix or remove them, or pass --allow-unprocessed to copy them unchanged"
        )
    renamed = _rename_members(tree)
    warnings = [f"{item} copied unchanged" for item in unprocessed]
    if renamed:
        warnings.append(f"renamed {len(renamed)} member(s) whose path held PII: {', '.join(renamed[:10])}")
    # --columns can leave PII the scanner sees: say where, so the result is not trusted blindly.
    return warnings + _residual(_scan_tree(tree), cols)


def _source_id(platform: Platform, ctx: Context, info: _versions.VersionInfo) -> int:
    with platform.db.read() as s:
        _, row = _versions._version_row(s, ctx, info.name, info.version)
        return row.id
