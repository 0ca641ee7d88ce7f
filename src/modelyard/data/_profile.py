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
              # numeric only (nulls and NaN left out):
              "min": 0.0, "max": 9.0, "mean": 4.5, "std": 2.9,
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
copy of such values.
"""

from __future__ import annotations

import json
import math
from typing import Any

FORMAT = "modelyard.profile/1"
TABULAR = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
BINS = 10
TOP = 10
MAX_TABLE_BYTES = 512 << 20  # larger tables get no statistics (they would be read whole into memory)
_MAX_VALUE_CHARS = 100
_MAX_CATEGORY_RATIO = 0.5


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


def read_table(path: str, fmt: str) -> Any:
    """The file as a pyarrow Table; ValueError with a one-line reason when it is malformed."""
    import pyarrow as pa

    try:
        if fmt == "csv":
            from pyarrow import csv

            return csv.read_csv(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        from pyarrow import json as pajson

        return pajson.read_json(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read it as {fmt}: {first[:300]}") from None


def profile_table(table: Any) -> dict[str, Any]:
    """Schema and statistics of a pyarrow Table."""
    return {
        "rows": table.num_rows,
        "columns": {name: _column(table.column(i)) for i, name in enumerate(table.column_names)},
    }


def profile_file(path: str, fmt: str, sha256: str, size: int) -> dict[str, Any]:
    if size > MAX_TABLE_BYTES:
        raise ValueError(f"it is larger than {MAX_TABLE_BYTES >> 20} MiB; statistics were not computed")
    table = read_table(path, fmt)
    return {"sha256": sha256, "format": fmt, **profile_table(table)}


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


def _column(col: Any) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = _kind(col.type)
    nulls = col.null_count
    out: dict[str, Any] = {"type": str(col.type), "kind": kind, "count": len(col) - nulls, "nulls": nulls}
    if kind == "numeric":
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False) if len(col) else np.array([])
        values = values[np.isfinite(values)]
        if values.size:
            counts, edges = np.histogram(values, bins=BINS)
            out.update(
                min=_finite(values.min()),
                max=_finite(values.max()),
                mean=_finite(values.mean()),
                std=_finite(values.std()),
                histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
            )
    elif kind in ("string", "boolean"):
        if kind == "string" and pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        counts = pc.value_counts(col.drop_null())
        distinct = len(counts)
        out["distinct"] = distinct
        categorical = distinct < out["count"] and distinct <= max(TOP, _MAX_CATEGORY_RATIO * out["count"])
        if distinct and (kind == "boolean" or (categorical and not _has_pii(col))):
            pairs = sorted(
                zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True),
                key=lambda p: (-p[1], str(p[0])),
            )[:TOP]
            out["top"] = [[_shown(v), int(c)] for v, c in pairs]
    elif kind == "temporal" and out["count"]:
        mm = pc.min_max(col)
        out["min"] = _iso(mm["min"].as_py())
        out["max"] = _iso(mm["max"].as_py())
    return out


def _has_pii(col: Any) -> bool:
    """The profile is plain metadata shown to every viewer: a column holding personal data (e-mails,
    cards, national ids...) keeps its counts but never lists its values."""
    import pyarrow as pa

    from modelyard.data._pii import scan_table

    return bool(scan_table(pa.table({"c": col})))


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
    """Schema and statistics changes of tables present in both profiles, by member path."""
    changes: dict[str, Any] = {}
    ta, tb = a.get("tables", {}), b.get("tables", {})
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
    return changes
