"""Schema and statistics of tabular members (CSV, Parquet, JSON lines): the drift reference.

The profile of a version is one JSON document (stored in ``dataset_versions.profile``)::

    {
      "format": "modelyard.profile/1",
      "tables": {
        "<member path>": {
          "sha256": "<digest of the file>", "format": "csv" | "parquet" | "jsonl", "rows": 1000,
          "columns": {
            "<column>": {
              "type": "int64",                       # the Arrow type, as str(type)
              "kind": "numeric" | "string" | "boolean" | "temporal" | "other",
              "count": 990, "nulls": 10,             # non-null and null values
              # numeric only (nulls, NaN and infinities left out; min/max in the column's own number
              # type, so int64 ids above 2**53 stay exact; one bin when all values are equal):
              "min": 0, "max": 9, "mean": 4.5, "std": 2.9,
              "histogram": {"edges": [11 floats], "counts": [10 ints]},
              # string and boolean:
              "distinct": 3, "top": [["a", 500], ["b", 300]],
              # temporal: "min" / "max" as ISO-8601 strings
            }
          }
        }
      },
      "skipped": {"<member path>": "why no statistics were recorded"}
    }

``yard data show`` and ``yard data diff`` read it; model monitoring compares with the training split's
rows instead (monitoring/_monitor.py), not with these summaries. Keys may be added in later minor
formats; readers ignore keys they do not know. ``top`` is left out for columns whose values are mostly
distinct (identifiers, e-mail addresses): they are not categories, and the profile must not become a
copy of such values. For the same reason a numeric column holding card numbers or national ids keeps
only its counts, a CSV column of numbers written with a leading zero or as +digits (phone numbers,
postcodes) is profiled as the text it holds, column names are shown with PII redacted (``<EMAIL>``),
and a skipped table's reason never quotes the parser's message (which quotes the offending row). A
column whose type has no statistics kernel (durations) keeps its type and counts.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, BinaryIO

FORMAT = "modelyard.profile/1"
TABULAR = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
BINS = 10
TOP = 10
# Statistics hold the decoded table in memory: larger ones get none. A text table is bounded by its file
# size (it decodes to a few times that at most); a Parquet file, which compresses, by its metadata.
MAX_TABLE_BYTES = 512 << 20
_MAX_VALUE_CHARS = 100
_SLICE = 1 << 20
_MAX_CATEGORY_RATIO = 0.5
_PII_SAMPLE = 10_000
# A number written as a code: a leading zero before a digit (0501234567, 04439), or + and 7+ digits.
_CODE_TEXT = r"^\s*(0[0-9]|\+[0-9]{7,}\s*$)"
# pyarrow's JSON reader recurses once per nesting level and crashes the process (SIGSEGV, not an error)
# somewhere past 16,000 levels: a 40 KB line of brackets killed `yard data add`. Real tables nest a few.
MAX_JSON_DEPTH = 1000
# The JSON reader's block size, set rather than left to pyarrow's default: a line longer than two blocks is
# always refused by it ("straddles two block boundaries"), so the depth check reads no more of a line.
JSON_BLOCK = 1 << 20
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


_SUFFIXES = tuple(TABULAR)


def table_format(name: str) -> str | None:
    lower = name.lower()
    if not lower.endswith(_SUFFIXES):  # one call for the common case: not a table
        return None
    for suffix, fmt in TABULAR.items():
        if lower.endswith(suffix):
            return fmt
    return None


def empty() -> dict[str, Any]:
    return {"format": FORMAT, "tables": {}, "skipped": {}}


def read_table(source: str | BinaryIO, fmt: str) -> Any:
    """The table in ``source`` (a path or a binary file) as a pyarrow Table; ValueError with a one-line
    reason when it is malformed."""
    import pyarrow as pa

    try:
        if fmt == "csv":
            from pyarrow import csv

            return csv.read_csv(source)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(source)
        from pyarrow import json as pajson

        if not isinstance(source, str):
            _check_json_depth(source)
            source.seek(0)
        return pajson.read_json(source, read_options=pajson.ReadOptions(block_size=JSON_BLOCK))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError):
        raise ValueError(_unreadable(fmt)) from None


def _check_json_depth(source: BinaryIO) -> None:
    """ValueError when a line of the JSON-lines file nests deeper than MAX_JSON_DEPTH, or is too long for the
    reader (read at most that far, not whole). A raw newline cannot be inside a JSON value, so each line
    starts at depth 0; only a line with that many brackets is walked."""
    while line := source.readline(2 * JSON_BLOCK + 1):
        if len(line) > 2 * JSON_BLOCK:
            raise ValueError(_unreadable("jsonl"))
        if line.count(b"[") + line.count(b"{") <= MAX_JSON_DEPTH:
            continue
        depth = 0
        for m in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", line)):
            depth += 1 if m.group() in (b"[", b"{") else -1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"cannot read it as jsonl: a line nests deeper than {MAX_JSON_DEPTH} levels")


def _unreadable(fmt: str) -> str:
    # Not pyarrow's message: it quotes the offending row, and this reason is shown to every viewer.
    return f"cannot read it as {fmt}: it is malformed or uses a feature pyarrow cannot read"


def profile_table(table: Any, schema: Any = None) -> dict[str, Any]:
    """Schema and statistics of a pyarrow Table (``schema``: the types to report, when the table was read
    with string columns dictionary-encoded)."""
    from modelyard.data._pii import redact_text

    columns: dict[str, Any] = {}
    for i, field in enumerate(table.schema if schema is None else schema):
        name = redact_text(field.name)  # a CSV whose first row is data has its values as column names
        if name in columns:
            name = f"{name} (column {i + 1})"
        columns[name] = _column(table.column(i), field.type, field.name)
    return {"rows": table.num_rows, "columns": columns}


def profile_file(source: BinaryIO, fmt: str, sha256: str, size: int) -> dict[str, Any]:
    """Profile of the table in the open file ``source`` (the caller opened the file it sealed)."""
    if size == 0:  # a placeholder, not a broken export: pyarrow's refusal read as "malformed"
        raise ValueError("it is empty (0 bytes)")
    if fmt == "parquet":
        table, schema = _read_parquet(source)
    else:
        if size > MAX_TABLE_BYTES:
            raise ValueError(f"it is larger than {MAX_TABLE_BYTES >> 20} MiB; statistics were not computed")
        table = read_table(source, fmt)
        if fmt == "csv":
            table = _codes_as_text(source, table)
        schema = table.schema
    return {"sha256": sha256, "format": fmt, **profile_table(table, schema)}


def _codes_as_text(source: BinaryIO, table: Any) -> Any:
    """The CSV's number columns written as codes (``_CODE_TEXT``: phone numbers, postcodes), as the text
    they hold. Read as integers, ``0501234567`` lost its zero, the PII guard no longer saw a phone number,
    and min/max/histogram edges showed the numbers to every viewer."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    names = table.column_names
    # A repeated name (a spreadsheet's "id,id") cannot be selected by name: such columns stay as read.
    ints = [
        n
        for n in names
        if names.count(n) == 1
        and (pa.types.is_integer(t := table.schema.field(n).type) or pa.types.is_floating(t))
    ]
    if not ints:
        return table
    try:
        # The first block (1 MiB of the file) decides, read again as text: the whole file is read again
        # only for the columns it shows to be codes (a table of phone numbers), not for every number column.
        source.seek(0)
        options = csv.ConvertOptions(column_types=dict.fromkeys(ints, pa.string()), include_columns=ints)
        with csv.open_csv(source, convert_options=options) as reader:
            head = reader.read_next_batch()
        found = [n for n in ints if pc.any(pc.match_substring_regex(head.column(n), _CODE_TEXT)).as_py()]
        if not found:
            return table
        source.seek(0)
        options = csv.ConvertOptions(column_types=dict.fromkeys(found, pa.string()), include_columns=found)
        text = csv.read_csv(source, convert_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError, StopIteration):
        raise ValueError(_unreadable("csv")) from None
    for name in found:
        table = table.set_column(names.index(name), pa.field(name, pa.string()), text.column(name))
    return table


def _read_parquet(source: BinaryIO) -> tuple[Any, Any]:
    """The table, with string and binary columns left dictionary-encoded, and the schema it would have
    when read plainly. Refused before reading when its metadata allows more than MAX_TABLE_BYTES once
    decoded: a few hundred KB of compressed, run-length or dictionary encoded pages can decode to GBs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
        md = pf.metadata
        strings = []
        decoded = 0
        for j in range(md.num_columns):
            col = md.schema.column(j)
            as_dictionary = col.physical_type == "BYTE_ARRAY" and col.logical_type.type in ("STRING", "NONE")
            if as_dictionary:
                strings.append(col.path)
            for i in range(md.num_row_groups):
                chunk = md.row_group(i).column(j)
                if col.physical_type == "BYTE_ARRAY" and not as_dictionary and chunk.has_dictionary_page:
                    raise ValueError("its decoded size cannot be bounded; statistics were not computed")
                # Each value decodes to its number, offset or dictionary index (<= 8 bytes, or its fixed
                # width); dictionaries and plain strings are within the pages' uncompressed bytes.
                decoded += chunk.num_values * max(8, col.length or 0) + chunk.total_uncompressed_size
        if decoded > MAX_TABLE_BYTES:
            raise ValueError(
                f"it decodes to more than {MAX_TABLE_BYTES >> 20} MiB; statistics were not computed"
            )
        # Batch by batch: decoding a whole row group at once costs several times the table it makes.
        reader = pq.ParquetFile(source, read_dictionary=strings, metadata=md)
        batches = reader.iter_batches(batch_size=_SLICE, use_threads=False)
        return pa.Table.from_batches(batches, schema=reader.schema_arrow), pf.schema_arrow
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError):
        raise ValueError(_unreadable("parquet")) from None


def _kind(t: Any) -> str:
    import pyarrow.types as pt

    if pt.is_integer(t) or pt.is_floating(t) or pt.is_decimal(t):
        return "numeric"
    if pt.is_string(t) or pt.is_large_string(t) or pt.is_dictionary(t):
        return "string"
    if pt.is_boolean(t):
        return "boolean"
    if pt.is_temporal(t):
        return "temporal"
    return "other"


def _finite(x: Any) -> float | None:
    f = float(x)
    return f if math.isfinite(f) else None


def _column(col: Any, declared: Any, name: str) -> dict[str, Any]:
    import pyarrow as pa

    kind = _kind(declared)
    nulls = col.null_count
    out: dict[str, Any] = {"type": str(declared), "kind": kind, "count": len(col) - nulls, "nulls": nulls}
    try:
        if kind == "numeric" and out["count"] and not _has_pii(_sample_distinct(col), name):
            out.update(_numeric(col))
        elif kind in ("string", "boolean"):
            out.update(_categories(col, kind, out["count"], name))
        elif kind == "temporal" and out["count"]:
            import pyarrow.compute as pc

            mm = pc.min_max(col)
            out["min"] = _iso(mm["min"].as_py())
            out["max"] = _iso(mm["max"].as_py())
    except (pa.ArrowException, TypeError, ValueError):
        pass  # no kernel for its type (durations...): the column keeps type and counts, the table the rest
    return out


def _numeric(col: Any) -> dict[str, Any]:
    """min/max in the column's own type (exact for int64), mean/std, and a histogram computed slice by
    slice, so that only _SLICE values at a time are converted to float64."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_decimal(col.type):
        col = col.cast(pa.float64(), safe=False)
    col = col.filter(pc.is_finite(col)) if pa.types.is_floating(col.type) else col.drop_null()
    if not len(col):
        return {}
    mm = pc.min_max(col)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    edges = np.linspace(float(lo), float(hi), BINS + 1)
    if not np.all(np.diff(edges) > 0):  # all values equal, or a range float64 cannot split into BINS
        edges = np.array([float(lo), float(hi)])
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for chunk in col.chunks:
        for start in range(0, len(chunk), _SLICE):  # a Parquet row group can hold millions of values
            values = chunk.slice(start, _SLICE).cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            counts += np.histogram(values, bins=edges)[0]
    return {
        "min": lo,
        "max": hi,
        "mean": _finite(pc.mean(col).as_py()),
        "std": _finite(pc.stddev(col).as_py()),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def _categories(col: Any, kind: str, count: int, name: str) -> dict[str, Any]:
    import pyarrow.compute as pc

    counts = pc.value_counts(col.drop_null())  # dictionary-encoded columns are counted without decoding
    distinct = len(counts)
    out: dict[str, Any] = {"distinct": distinct}
    categorical = distinct < count and distinct <= max(TOP, _MAX_CATEGORY_RATIO * count)
    values = counts.field("values")
    if distinct and (kind == "boolean" or (categorical and not _has_pii(values, name))):
        pairs = sorted(
            zip(values.to_pylist(), counts.field("counts").to_pylist(), strict=True),
            key=lambda p: (-p[1], str(p[0])),
        )[:TOP]
        out["top"] = [[_shown(v), int(c)] for v, c in pairs]
    return out


def _has_pii(values: Any, name: str) -> bool:
    """The profile is plain metadata shown to every viewer: a column holding personal data (e-mails,
    cards, national ids...) keeps its counts but never shows its values, not even as min/max. A column
    named for e-mail is scanned as one (addresses at any TLD count there); the name itself is not."""
    import pyarrow as pa

    from modelyard.data._pii import _email_name, scan_table

    return bool(scan_table(pa.table({"email" if _email_name(name) else "c": values})))


def _sample_distinct(col: Any) -> Any:
    """At most _PII_SAMPLE distinct values: a column of card numbers or ids is made of them, so a sample
    says whether its min/max would show one, at a bounded cost (a million distinct timestamps of 13 digits
    each go through the text scan otherwise)."""
    import pyarrow.compute as pc

    distinct = pc.unique(col)
    return distinct.slice(0, _PII_SAMPLE)


def _shown(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
        return value[:_MAX_VALUE_CHARS] + "…"
    return value


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def dumps(profile: dict[str, Any]) -> str:
    return json.dumps(profile, sort_keys=True, separators=(",", ":"), allow_nan=False)


def loads(text: str) -> dict[str, Any]:
    """Parse a stored profile, checking its format tag (an older empty profile reads as empty)."""
    doc = json.loads(text or "{}")
    if not isinstance(doc, dict):
        raise ValueError("a profile must be a JSON object")
    if not doc:
        return empty()
    if doc.get("format") != FORMAT:
        raise ValueError(f"unknown profile format {doc.get('format')!r}; expected {FORMAT!r}")
    doc.setdefault("tables", {})
    doc.setdefault("skipped", {})
    return doc


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Schema and statistics changes of tables present in both profiles, by member path. A table profiled
    in one and skipped in the other (it stopped or started parsing) has ``no_statistics``: the reason
    for each side, None where it was profiled."""
    changes: dict[str, Any] = {}
    ta, tb = a.get("tables", {}), b.get("tables", {})
    sa, sb = a.get("skipped", {}), b.get("skipped", {})
    for path in (set(ta) & set(sb)) | (set(sa) & set(tb)):
        changes[path] = {
            "rows": [ta.get(path, {}).get("rows"), tb.get(path, {}).get("rows")],
            "columns_added": [],
            "columns_removed": [],
            "type_changes": {},
            "stats": {},
            "no_statistics": [sa.get(path), sb.get(path)],
        }
    for path in sorted(set(ta) & set(tb)):
        x, y = ta[path], tb[path]
        if x.get("sha256") == y.get("sha256"):
            continue
        cx, cy = x.get("columns", {}), y.get("columns", {})
        entry: dict[str, Any] = {
            "rows": [x.get("rows"), y.get("rows")],
            "columns_added": sorted(set(cy) - set(cx)),
            "columns_removed": sorted(set(cx) - set(cy)),
            "type_changes": {
                c: [cx[c]["type"], cy[c]["type"]]
                for c in sorted(set(cx) & set(cy))
                if cx[c]["type"] != cy[c]["type"]
            },
            "stats": {},
        }
        for c in sorted(set(cx) & set(cy)):
            delta = {
                k: [cx[c].get(k), cy[c].get(k)]
                for k in ("nulls", "min", "max", "mean", "distinct")
                if cx[c].get(k) != cy[c].get(k)
            }
            if delta:
                entry["stats"][c] = delta
        changes[path] = entry
    return dict(sorted(changes.items()))
