"""Step 1 of a recipe: read the examples of every split from versioned datasets.

``load_splits`` resolves each dataset version of ``recipe.data`` to a verified local copy
(:func:`modelyard.data.get`), picks the member file, reads it (JSONL, CSV or Parquet) and returns
``Splits`` with the examples of train, validation and test and the versions read, for lineage.

Member choice, in order: ``data.file`` if given; else the only table file (of ``data.format``, or any of
.jsonl/.csv/.parquet with ``auto``); else, in the per-split form, the table file named after the split
(``train.jsonl`` for ``train``); else a :class:`UsageError` listing the candidates.

The single-version form (``dataset`` + ``split`` ratios) is cut by a seeded permutation: the row indices
``0..n-1`` are shuffled with ``random.Random(data.seed)`` and the first ``n - n_val - n_test`` go to
train, the next ``n_val = floor(n * validation)`` to validation and the last ``n_test = floor(n * test)`` to
test (rounding goes to train). The same seed and the same version give the same split, on every machine and
every Python (``random.Random.shuffle`` with an integer seed is stable). This module imports pyarrow lazily.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelyard.errors import UsageError, ValidationError

if TYPE_CHECKING:
    from modelyard.core import Context, Platform
    from modelyard.training._recipe import DataSection, Recipe

SplitName = Literal["train", "validation", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "validation", "test")

#: file suffix -> format
_SUFFIXES: dict[str, str] = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: how many bad row numbers an error message shows
_SHOW = 5


@dataclass(frozen=True, slots=True)
class Example:
    """One training pair; ``group`` is the slice column (``data.group_field``) as text, or None."""

    source: str
    target: str
    group: str | None = None


@dataclass(slots=True)
class Splits:
    """The examples of each split and the dataset versions read (role -> ``name@v``), for lineage."""

    train: list[Example]
    validation: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    #: the member file read for each role (role -> member path inside the version)
    files: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: SplitName) -> list[Example]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def load_splits(platform: Platform, ctx: Context, recipe: Recipe, *, blank_ok: bool = False) -> Splits:
    """Read the examples of ``recipe.data``: one version per split, or one version cut by the split ratios.
    ``blank_ok``: keep empty texts (see :func:`read_examples`), for reading what an older run trained on.

    Raises :class:`UsageError` when no member file can be chosen, :class:`ValidationError` when a field is
    missing or a value is null or not a string, and the errors of :func:`modelyard.data.get` (not found,
    permission denied) unchanged."""
    from modelyard.data import get

    data = recipe.data
    versions = data.versions()
    roots: dict[str, Path] = {}
    for spec in dict.fromkeys(versions.values()):
        roots[spec] = get(spec, platform=platform, ctx=ctx)

    if data.dataset is not None:
        member = pick_member(roots[data.dataset], data, role=None)
        rows = read_examples(
            roots[data.dataset] / member, data, label=f"{data.dataset}:{member}", blank_ok=blank_ok
        )
        train, validation, test = split_examples(rows, data)
        return Splits(train, validation, test, versions=dict(versions), files={"dataset": member})

    out: dict[str, list[Example]] = {}
    files: dict[str, str] = {}
    for role, spec in versions.items():
        member = pick_member(roots[spec], data, role=role)
        out[role] = read_examples(roots[spec] / member, data, label=f"{spec}:{member}", blank_ok=blank_ok)
        files[role] = member
    return Splits(
        out["train"], out.get("validation", []), out.get("test", []), versions=dict(versions), files=files
    )


def split_examples(
    rows: list[Example], data: DataSection
) -> tuple[list[Example], list[Example], list[Example]]:
    """Cut ``rows`` into train/validation/test by ``data.ratios``, in the order of a permutation seeded by
    ``data.seed``."""
    ratios = data.ratios
    n = len(rows)
    n_val = int(n * ratios.validation)
    n_test = int(n * ratios.test)
    n_train = n - n_val - n_test
    order = list(range(n))
    random.Random(data.seed).shuffle(order)
    picked = [rows[i] for i in order]
    return picked[:n_train], picked[n_train : n_train + n_val], picked[n_train + n_val :]


def read_split(
    root: Path, spec: str, data: DataSection, split: SplitName, run: DataSection | None
) -> tuple[list[Example], str, bool]:
    """The examples of ``split`` in the checkout ``root`` of ``spec``: (examples, member file, whether they
    were cut as the run did).

    ``run`` is the data section of the recipe that trained the model being evaluated, or None. When that run
    cut this very member of ``spec`` by ratios, the examples are its seeded ``split`` of it: the whole file
    would score the model on the rows it trained on. Otherwise they are the whole member ``data`` picks for
    ``split``."""
    member = pick_member(root, data, role=split)
    cut = run is not None and run.dataset == spec and member == pick_member(root, run, role=None)
    rows = read_examples(root / member, data, label=f"{spec}:{member}")
    if cut and run is not None:
        rows = dict(zip(SPLIT_NAMES, split_examples(rows, run), strict=True))[split]
    return rows, member, cut


def _format_of(path: str) -> str | None:
    return _SUFFIXES.get(Path(path).suffix.lower())


def _table_files(root: Path) -> list[str]:
    """Member paths (relative, forward slashes, sorted) of every table file in a checkout; hidden skipped."""
    found: list[str] = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if _format_of(path.name) is not None:
            found.append(rel.as_posix())
    return sorted(found)


def pick_member(root: Path, data: DataSection, *, role: str | None) -> str:
    """The member file to read from the checkout ``root`` (see the module docstring for the rules)."""
    if data.file is not None:
        path = root / data.file
        if not path.is_file():
            raise UsageError(
                f"data.file: {data.file!r} is not a file of the dataset version; "
                f"its table files are: {', '.join(_table_files(root)) or '(none)'}"
            )
        fmt = data.format if data.format != "auto" else _format_of(data.file)
        if fmt is None:
            raise UsageError(
                f"data.file: cannot tell the format of {data.file!r} from its suffix; "
                f"set data.format to jsonl, csv or parquet"
            )
        return data.file
    tables = _table_files(root)
    try:
        return choose_member(tables, data, role=role)
    except UsageError as exc:
        if exc.details.get("candidates"):
            raise
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        raise UsageError(f"{exc.message}; its files are: {', '.join(files) or '(none)'}") from None


def choose_member(members: list[str], data: DataSection, *, role: str | None) -> str:
    """The member to read among a version's member paths when ``data.file`` is not given (the module
    docstring's rules), or a :class:`UsageError`. Also used before a job is queued, from the manifest."""
    tables = sorted(
        m for m in members if not any(p.startswith(".") for p in m.split("/")) and _format_of(m) is not None
    )
    candidates = [t for t in tables if data.format == "auto" or _format_of(t) == data.format]
    if len(candidates) == 1:
        return candidates[0]
    if role is not None:
        named = [t for t in candidates if Path(t).stem == role and "/" not in t]
        if len(named) == 1:
            return named[0]
    kind = "table files" if data.format == "auto" else f"{data.format} files"
    if not candidates:
        raise UsageError(f"the dataset version has no {kind} (.jsonl, .csv, .parquet)")
    raise UsageError(
        f"the dataset version has {len(candidates)} {kind}; choose one with data.file: "
        f"{', '.join(candidates)}",
        candidates=candidates,
    )


def read_examples(
    path: Path, data: DataSection, *, label: str | None = None, blank_ok: bool = False
) -> list[Example]:
    """Read the examples of one file (format from ``data.format`` or the suffix), checking the fields.

    Every row must carry a non-blank string ``source_field`` and ``target_field``; null, non-string, empty
    or whitespace-only values are one :class:`ValidationError` with their count and the first row numbers
    (1-based data rows); ``blank_ok`` keeps empty and whitespace-only texts (models trained before they
    were refused). The group field, when set, may hold any scalar (converted with ``str``) or null."""
    label = label or path.name
    fmt = data.format if data.format != "auto" else _format_of(path.name)
    if fmt == "jsonl":
        columns, table = _read_jsonl(path, label)
    elif fmt == "csv":
        columns, table = _read_csv(path, label)
    elif fmt == "parquet":
        columns, table = _read_parquet(path, label)
    else:
        raise UsageError(f"{label}: cannot tell the format from the suffix; set data.format")

    wanted = [data.source_field, data.target_field]
    if data.group_field is not None:
        wanted.append(data.group_field)
    missing = [f for f in wanted if f not in columns]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise ValidationError(
            f"{label}: no field {names} (columns present: {', '.join(columns) or '(none)'}); "
            f"set data.source_field / data.target_field / data.group_field to the right columns",
            missing=missing,
            columns=columns,
        )

    sources, targets = table[data.source_field], table[data.target_field]
    groups = table[data.group_field] if data.group_field is not None else None
    bad: dict[str, list[int]] = {}
    blank: dict[str, list[int]] = {}
    examples: list[Example] = []
    for i, (s, t) in enumerate(zip(sources, targets, strict=True)):
        ok = True
        for name, value in ((data.source_field, s), (data.target_field, t)):
            if not isinstance(value, str):
                bad.setdefault(name, []).append(i + 1)
                ok = False
            elif not blank_ok and not value.strip():
                # Nothing to learn from: such a pair trains towards end-of-sequence alone (or from no input).
                blank.setdefault(name, []).append(i + 1)
                ok = False
        if ok:
            g = groups[i] if groups is not None else None
            examples.append(Example(s, t, None if g is None else str(g)))
    if bad or blank:
        parts = []
        for what, found in (("a null or non-string", bad), ("an empty or whitespace-only", blank)):
            for name, rows in found.items():
                shown = ", ".join(map(str, rows[:_SHOW])) + (", ..." if len(rows) > _SHOW else "")
                parts.append(f"{len(rows)} of {len(sources)} rows have {what} {name!r} (rows {shown})")
        raise ValidationError(
            f"{label}: {'; '.join(parts)}; fix or drop those rows in a new dataset version",
            bad_rows={k: len(v) for k, v in bad.items()},
            blank_rows={k: len(v) for k, v in blank.items()},
        )
    return examples


def _read_jsonl(path: Path, label: str) -> tuple[list[str], dict[str, list[Any]]]:
    """Line by line (robust to mixed types that pyarrow.json would refuse); blank lines are skipped."""
    records: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            # One line at a time, so an error names it; a BOM (spreadsheet exports write one) is not data.
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise ValidationError(
                    f"{label}: line {lineno} is not UTF-8 text; re-encode the file"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValidationError(f"{label}: line {lineno} is not valid JSON ({exc.msg})") from None
            except RecursionError:  # thousands of nested brackets
                raise ValidationError(f"{label}: line {lineno} is nested too deeply") from None
            if not isinstance(obj, dict):
                raise ValidationError(f"{label}: line {lineno} is not a JSON object")
            records.append(obj)
    columns = list(dict.fromkeys(k for r in records for k in r))
    return columns, {c: [r.get(c) for r in records] for c in columns}


def _read_csv(path: Path, label: str) -> tuple[list[str], dict[str, list[Any]]]:
    """Every column read as text (so ``007`` stays ``007``); empty cells are empty strings."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    _check_utf8(path, label)
    # utf-8-sig: pyarrow drops a leading BOM from the first column's name, so the header read here must
    # too, or that column's type is inferred (007 -> 7) instead of text.
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        try:
            header = next(csv.reader(f), [])
        except csv.Error as exc:  # a header field past the csv module's limit, ...
            raise ValidationError(f"{label}: not a readable CSV file ({exc})") from None
    if not header:
        return [], {}
    _check_unique(header, label)
    try:
        table = pcsv.read_csv(
            path,
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        raise ValidationError(f"{label}: not a readable CSV file ({exc})") from None
    return list(table.column_names), {c: table.column(c).to_pylist() for c in table.column_names}


def _check_unique(columns: list[str], label: str) -> None:
    """Refuse a column name given twice: which of the two a field means is anyone's guess."""
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ValidationError(
            f"{label}: the column {twice[0]!r} is named twice; give each column its own name",
            columns=twice,
        )


def _check_utf8(path: Path, label: str) -> None:
    """A clear error naming the line of the first byte that is not UTF-8 (streamed, not read whole)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 1
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                lines += chunk.count(b"\n", 0, max(exc.start - pending, 0))
                raise ValidationError(
                    f"{label}: line {lines} is not UTF-8 text; re-encode the file"
                ) from None
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValidationError(f"{label}: line {lines} is not UTF-8 text; re-encode the file") from None


def _read_parquet(path: Path, label: str) -> tuple[list[str], dict[str, list[Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationError(f"{label}: not a readable Parquet file ({exc})") from None
    return list(table.column_names), {c: table.column(c).to_pylist() for c in table.column_names}


__all__ = [
    "SPLIT_NAMES",
    "Example",
    "Splits",
    "load_splits",
    "pick_member",
    "read_examples",
    "split_examples",
]
