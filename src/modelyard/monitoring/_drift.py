"""Drift between a reference sample and a current sample, column by column.

**Which test decides a column** (the ``test`` of a :class:`ColumnDrift`). Verdicts are meant to agree with
Evidently's ``DataDriftPreset`` on the same data, so its default choice is copied exactly (Evidently
0.7.23, ``evidently/legacy/calculations/stattests/registry.py::_get_default_stattest`` and the stattest
modules beside it; the same rule is documented at docs.evidentlyai.com, "data drift algorithm"). ``n`` is
the number of non-missing reference values, ``u`` the number of distinct non-missing values in both
samples together:

============  ==================  =========================================  ==========================
kind          n <= 1000           test                                       drift when
============  ==================  =========================================  ==========================
numeric       yes, u > 5          two-sample Kolmogorov-Smirnov (``ks``)     p-value <= 0.05
numeric       yes, 2 < u <= 5     chi-square on value counts (``chisquare``)  p-value < 0.05
numeric       yes, u <= 2         two-proportion z-test (``z``)              p-value < 0.05
numeric       no, u > 5           Wasserstein / std(reference) (``wasserstein``)  distance >= 0.1
numeric       no, u <= 5          Jensen-Shannon on value counts             distance >= 0.1
categorical   yes, u > 2          chi-square (``chisquare``)                 p-value < 0.05
categorical   yes, u <= 2         z-test (``z``)                             p-value < 0.05
categorical   no                  Jensen-Shannon distance (``jensenshannon``)  distance >= 0.1
============  ==================  =========================================  ==========================

Details copied with the rule: missing values (null, NaN) and +-inf are dropped before testing; the
Jensen-Shannon distance uses the natural logarithm and no smoothing; the Wasserstein norm is the population
standard deviation of the reference (0.001 where it has none: see the second departure below); p-values of
the Kolmogorov-Smirnov test are scipy's ``ks_2samp`` (see :func:`_ks_p_value` for the one shortcut, in a
statistic that never decides a column).
The **dataset** drifts when the share of drifted columns is at least ``drift_share`` (0.5).

**First deliberate departure: the chi-square.** Evidently's chi-square compares the current counts with the
reference's scaled to the current size, as if the reference shares were exact (a goodness-of-fit test).
The reference is a sample too, so its noise inflates the statistic by about 1 + n_cur / n_ref: two samples
of one distribution, 400 and 300 values, are flagged 28% of the time at p < 0.05 (measured over 500
seeds), and a category the reference lacks makes the statistic infinite. modelyard's default is Pearson's
two-sample test of homogeneity on the 2 x k table (``scipy.stats.chi2_contingency``, no continuity
correction), which is flagged 4.4% of the time on the same data. ``chisquare="evidently"`` restores
Evidently's form, and its verdicts. It only matters for categorical columns of at most 1,000 reference
values with more than two categories (and numeric ones with 3-5 distinct values): larger samples are
decided by distances, where both agree.

**Second departure: the Wasserstein norm's floor.** Evidently divides by ``max(std, 0.001)``, an absolute
floor, so the "0.1 standard deviations" its threshold stands for became 0.1 thousandths for a column of
small numbers: with a reference std of 1e-6, a shift of 10 deviations read 0.01 (no drift), and the verdict
changed with the unit. modelyard divides by the standard deviation whatever its size, and uses Evidently's
0.001 only for a reference without spread (a constant column), where the two agree. Verdicts differ only
for columns whose reference std is below 0.001.

Both the distance (a mean over all values) and its norm (a standard deviation) are led by outliers: a few
extreme reference values can hide a shift of the whole bulk, and a few extreme current values can make the
verdict alone. The verdict stays Evidently's, but the column then carries a note saying so, with the
distance in the reference's robust spread (interquartile range / 1.349, ``std_reference_robust``) or
without the current values beyond the reference's range, beside the K-S p-value and PSI.

A column decided by a p-value also reports the smallest p-value its test can give at these sample sizes
(``smallest_p_value``, that of two samples with nothing in common), and a note where even that does not
reach the threshold: 3 values against 3 cannot drift under K-S (p >= 0.1), which is not the same as no drift.

Every numeric column also reports PSI (10 bins at the reference's quantiles, shares below 1e-4 raised to
1e-4), the Kolmogorov-Smirnov statistic and p-value, and the raw and normed Wasserstein distance; every
categorical column the chi-square statistic and p-value, the Jensen-Shannon distance, PSI and the
categories the reference never had. Missing values are counted per sample and reported as shares; +-inf
in a numeric column is not missing (it is a value, often an overflow or a division by zero upstream), so it
is counted and reported on its own (``reference_infinite`` / ``current_infinite``, their shares, and a
note), outside the tests as in Evidently.

**Third departure: a column with no value on one side.** Evidently raises ("An empty column ... was
provided"), which hides every other column's verdict. Here a column entirely missing in the current sample
is drifted (the feature stopped arriving): test ``missing``, its statistic the current share of missing
values (1, at a threshold of 1), with a note. A numeric column with no finite value (only NaN and +-inf, an
overflow upstream) is judged the same way. A column entirely missing in the reference has nothing to be
compared with: it is not judged (``judged`` False, statistic NaN, a note) and left out of the drifted share.

**Column kinds** (when not given; :func:`infer_kind`, Evidently's ``infer_column_type`` rule, applied to
the reference): floats are numeric; integers are categorical with at most 10 distinct values, numeric
otherwise; booleans and Arrow dictionary columns are categorical; strings are text when more than half of
the non-missing values are distinct, categorical otherwise.

**Text columns** (:func:`text_drift`) have four parts, each with a p-value: the number of characters and of
whitespace-separated words (Kolmogorov-Smirnov), the token distribution (Jensen-Shannon distance over the
reference's ``top_k`` tokens plus one bucket for every other token) and the out-of-vocabulary rate (share
of current tokens the reference never had). The last two have no closed-form null distribution (tokens of
one text are not independent, and both statistics depend on a vocabulary chosen from the reference), so
their p-values come from a permutation test over whole texts: the texts of both samples are reassigned at
random ``permutations`` times, keeping the sample sizes, and the statistic, vocabulary choice included, is
recomputed each time. The reference's own held-out OOV rate (5 folds) is reported beside the current one as
the level to read it against. A text column drifts when a part's p-value is below ``0.05 / parts``
(Bonferroni), so two samples of one distribution are flagged at most 5% of the time.

**Speed.** Each sample of a numeric column is sorted once (numpy's SIMD sort) and the two are merged in
linear time; everything else (KS, Wasserstein, PSI, distinct values, histograms) is read from the sorted
arrays. Categorical columns are counted by Arrow's hash kernels (``value_counts``), never sorted.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from modelyard.errors import NotFoundError, UsageError, ValidationError

__all__ = [
    "ColumnDrift",
    "ColumnKind",
    "DriftReport",
    "detect_drift",
    "infer_kind",
    "text_drift",
    "word_tokens",
]

ColumnKind = Literal["numeric", "categorical", "text"]
ChiSquareMode = Literal["two-sample", "evidently"]
KINDS: tuple[ColumnKind, ...] = ("numeric", "categorical", "text")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# ---- Evidently's defaults (evidently 0.7.23, legacy/calculations/stattests/*.py, core/datasets.py) ----
#: reference sizes (non-missing values) up to this get p-value tests, larger ones distances
SMALL_SAMPLE = 1000
#: numeric columns with at most this many distinct values (both samples) are tested as categories
FEW_VALUES = 5
P_VALUE_THRESHOLD = 0.05
DISTANCE_THRESHOLD = 0.1
#: the dataset drifts when at least this share of its columns drift
DRIFT_SHARE = 0.5
#: integer columns with at most this many distinct values are categorical
INTEGER_CARDINALITY_LIMIT = 10
#: string columns with more than this share of distinct values are text
TEXT_DISTINCT_SHARE = 0.5
#: scipy.stats.ks_2samp computes exact p-values up to this many values per sample (MAX_AUTO_N)
KS_EXACT_MAX = 10_000
WASSERSTEIN_MIN_NORM = 0.001
#: interquartile range of a normal distribution, in standard deviations (2 * 0.6745)
IQR_PER_STD = 1.349

# ---- modelyard's own choices ----
PSI_BINS = 10
PSI_EPSILON = 1e-4
HISTOGRAM_BINS = 30
PLOT_CATEGORIES = 20
TOP_K = 1000
PERMUTATIONS = 200
MAX_TEXTS = 20_000
OOV_FOLDS = 5

TESTS: dict[str, str] = {
    "ks": "K-S p_value",
    "chisquare": "chi-square p_value",
    "z": "Z-test p_value",
    "wasserstein": "Wasserstein distance (normed)",
    "jensenshannon": "Jensen-Shannon distance",
    "text": "text (Bonferroni-adjusted p_value)",
    "token_js": "token Jensen-Shannon (permutation p_value)",
    "oov": "out-of-vocabulary rate (permutation p_value)",
    "missing": "share of missing (numeric: or infinite) values",
}
_P_VALUE_TESTS = frozenset({"ks", "chisquare", "z", "text", "token_js", "oov"})

_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """The default tokenizer: runs of Unicode word characters (letters, digits, underscore); case is kept,
    punctuation and whitespace separate tokens (``re.findall(r"\\w+", text)``)."""
    return _WORD.findall(text)


# =============================================================================================== results


@dataclass(frozen=True)
class ColumnDrift:
    """The drift verdict of one column.

    ``statistic`` is the deciding test's score: a p-value (``statistic_kind == "p_value"``: drift when it
    is below ``threshold``; ``ks`` also at equality) or a distance (drift when at least ``threshold``).
    ``stats`` holds the other statistics (PSI, KS, Wasserstein, chi-square, Jensen-Shannon, ...),
    ``plot`` the small summaries the HTML report draws, ``parts`` the four parts of a text column."""

    name: str
    kind: ColumnKind
    test: str
    statistic: float
    threshold: float
    drifted: bool
    reference_count: int
    current_count: int
    reference_missing: int
    current_missing: int
    reference_infinite: int = 0  # +-inf of a numeric column: not missing, not in the tests either
    current_infinite: int = 0
    stats: Mapping[str, Any] = field(default_factory=dict)
    plot: Mapping[str, Any] = field(default_factory=dict)
    parts: tuple[ColumnDrift, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    judged: bool = True  # False: no reference value to compare with (no score, not drifted)

    @property
    def test_name(self) -> str:
        return TESTS.get(self.test, self.test)

    @property
    def statistic_kind(self) -> Literal["p_value", "distance"]:
        return "p_value" if self.test in _P_VALUE_TESTS else "distance"

    @property
    def reference_rows(self) -> int:
        return self.reference_count + self.reference_missing + self.reference_infinite

    @property
    def current_rows(self) -> int:
        return self.current_count + self.current_missing + self.current_infinite

    @property
    def reference_missing_share(self) -> float:
        return _share(self.reference_missing, self.reference_rows)

    @property
    def current_missing_share(self) -> float:
        return _share(self.current_missing, self.current_rows)

    @property
    def reference_infinite_share(self) -> float:
        return _share(self.reference_infinite, self.reference_rows)

    @property
    def current_infinite_share(self) -> float:
        return _share(self.current_infinite, self.current_rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain types only, non-finite numbers as ``None``."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "test": self.test,
            "test_name": self.test_name,
            "statistic": self.statistic,
            "statistic_kind": self.statistic_kind,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "reference_count": self.reference_count,
            "current_count": self.current_count,
            "reference_missing": self.reference_missing,
            "current_missing": self.current_missing,
            "reference_missing_share": self.reference_missing_share,
            "current_missing_share": self.current_missing_share,
            "missing_share_change": self.current_missing_share - self.reference_missing_share,
            "reference_infinite": self.reference_infinite,
            "current_infinite": self.current_infinite,
            "reference_infinite_share": self.reference_infinite_share,
            "current_infinite_share": self.current_infinite_share,
            "infinite_share_change": self.current_infinite_share - self.reference_infinite_share,
            "stats": dict(self.stats),
            "plot": dict(self.plot),
            "parts": [p.to_dict() for p in self.parts],
            "notes": list(self.notes),
            "seconds": self.seconds,
            "judged": self.judged,
        }
        result: dict[str, Any] = _json_safe(out)
        return result


@dataclass(frozen=True)
class DriftReport:
    """Per-column verdicts and the dataset verdict: the dataset drifts when at least ``drift_share`` of its
    columns drift (Evidently's rule)."""

    columns: tuple[ColumnDrift, ...]
    reference_rows: int
    current_rows: int
    drift_share: float = DRIFT_SHARE
    seconds: float = 0.0

    #: header of :meth:`rows`
    ROW_HEADER: ClassVar[tuple[str, ...]] = (
        "column",
        "kind",
        "test",
        "score",
        "threshold",
        "drift",
        "missing ref -> cur",
        "details",
    )

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.drifted)

    @property
    def share_drifted(self) -> float:
        # Of the columns judged: one with nothing in the reference to compare with is neither drifted nor
        # not, so it does not dilute the share.
        return _share(len(self.drifted_columns), sum(c.judged for c in self.columns))

    @property
    def dataset_drifted(self) -> bool:
        return bool(self.columns) and self.share_drifted >= self.drift_share

    def column(self, name: str) -> ColumnDrift:
        for col in self.columns:
            if col.name == name:
                return col
        raise NotFoundError(
            f"no column {name!r} in this drift report; it has {', '.join(repr(c.name) for c in self.columns)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (``json.dumps(report.to_dict(), allow_nan=False)`` works)."""
        out: dict[str, Any] = {
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "drift_share": self.drift_share,
            "drifted_columns": list(self.drifted_columns),
            "share_drifted": self.share_drifted,
            "dataset_drifted": self.dataset_drifted,
            "seconds": self.seconds,
            "columns": [c.to_dict() for c in self.columns],
        }
        result: dict[str, Any] = _json_safe(out)
        return result

    def rows(self) -> list[tuple[str, ...]]:
        """One row of strings per column, for ``rich.table.Table(*DriftReport.ROW_HEADER)``."""
        return [_row(c) for c in self.columns]

    def to_html(self, path: str | Path, *, title: str = "Drift report") -> Path:
        """Write a self-contained HTML page (plots embedded as PNG, every value escaped) and return its
        path. Needs matplotlib (the ``monitor`` extra)."""
        from modelyard.monitoring._report import write_html

        return write_html(self, Path(path), title=title)


# ============================================================================================= public API


def detect_drift(
    reference: Any,
    current: Any,
    *,
    columns: Sequence[str] | None = None,
    kinds: Mapping[str, ColumnKind] | None = None,
    drift_share: float = DRIFT_SHARE,
    psi_bins: int = PSI_BINS,
    chisquare: ChiSquareMode = "two-sample",
    tokenizer: Callable[[str], Sequence[str]] | None = None,
    top_k: int = TOP_K,
    permutations: int = PERMUTATIONS,
    max_texts: int = MAX_TEXTS,
    seed: int = 0,
    workers: int = 1,
) -> DriftReport:
    """Compare ``current`` with ``reference`` column by column.

    Each sample is a ``pyarrow.Table`` (or ``RecordBatch``) or a mapping of column name to values (numpy
    array, list, tuple or pyarrow array), all columns of one sample of the same length. Both samples must
    have the same columns unless ``columns`` names the ones to compare. ``kinds`` fixes the kind of some
    columns (``"numeric"``, ``"categorical"`` or ``"text"``); the others are inferred from the reference
    (:func:`infer_kind`). ``chisquare="evidently"`` uses Evidently's goodness-of-fit chi-square instead
    of the two-sample test (see the module docstring). ``tokenizer``, ``top_k``, ``permutations``,
    ``max_texts`` and ``seed`` apply to text columns (see :func:`text_drift`). ``workers`` > 1 compares
    that many columns at once in threads (numpy and Arrow release the GIL)."""
    started = time.perf_counter()
    _require_scipy()
    _check_options(drift_share, psi_bins, top_k, permutations, max_texts, workers)
    if chisquare not in ("two-sample", "evidently"):
        raise ValidationError(f"chisquare must be 'two-sample' or 'evidently', got {chisquare!r}")
    ref_cols, ref_rows = _sample_columns(reference, "reference")
    cur_cols, cur_rows = _sample_columns(current, "current")
    names = _column_names(ref_cols, cur_cols, columns)
    given = dict(kinds or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValidationError(
            f"kinds names columns that are not compared: {', '.join(map(repr, unknown))}",
            columns=unknown,
        )
    for name, kind in given.items():
        if kind not in KINDS:
            raise ValidationError(
                f"kind of column {name!r} must be one of {', '.join(KINDS)}, got {kind!r}", column=name
            )
    options = _Options(psi_bins, chisquare, tokenizer, top_k, permutations, max_texts, seed)

    def one(name: str) -> ColumnDrift:
        ref, cur = ref_cols[name], cur_cols[name]
        kind = given.get(name)
        if kind is None:
            # A reference without values has no kind to infer: the current values' (it is not judged).
            seen = ref if _present(ref) else cur
            kind = _infer(seen, name) if _present(seen) else _MISSING_KINDS.get(seen.family, "categorical")
        return _column_drift(name, kind, ref, cur, options)

    if workers > 1 and len(names) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(names))) as pool:
            results = tuple(pool.map(one, names))
    else:
        results = tuple(one(name) for name in names)
    return DriftReport(
        columns=results,
        reference_rows=ref_rows,
        current_rows=cur_rows,
        drift_share=float(drift_share),
        seconds=time.perf_counter() - started,
    )


def text_drift(
    reference: Any,
    current: Any,
    *,
    name: str = "text",
    tokenizer: Callable[[str], Sequence[str]] | None = None,
    top_k: int = TOP_K,
    permutations: int = PERMUTATIONS,
    max_texts: int = MAX_TEXTS,
    seed: int = 0,
) -> ColumnDrift:
    """Drift of one text column: character and word lengths, the token distribution (Jensen-Shannon over
    the reference's ``top_k`` tokens plus an "other" bucket) and the out-of-vocabulary rate.

    ``reference`` and ``current`` are sequences of strings (``None`` counts as missing) or pyarrow string
    arrays. ``tokenizer`` maps a text to its tokens (default :func:`word_tokens`). Samples above
    ``max_texts`` texts are subsampled (without replacement, by ``seed``) before the tests; p-values of
    the token tests come from ``permutations`` permutations of whole texts (at least 100)."""
    _require_scipy()
    _check_options(DRIFT_SHARE, PSI_BINS, top_k, permutations, max_texts, 1)
    ref = _as_column(reference, name, "reference")
    cur = _as_column(current, name, "current")
    options = _Options(PSI_BINS, "two-sample", tokenizer, top_k, permutations, max_texts, seed)
    return _column_drift(name, "text", ref, cur, options)


def infer_kind(values: Any, *, name: str = "column") -> ColumnKind:
    """The kind :func:`detect_drift` infers for a column of these values (see the module docstring)."""
    return _infer(_as_column(values, name, "reference"), name)


# ========================================================================================= input handling


def _require_scipy() -> None:
    try:
        import scipy  # noqa: F401
    except ImportError:
        raise UsageError("drift detection needs scipy: pip install 'modelyard[monitor]'") from None


@dataclass(frozen=True)
class _Column:
    data: Any  # a 1-d numpy array of numbers or booleans, or a pyarrow Array / ChunkedArray
    family: str  # float | int | bool | string | dictionary | null
    length: int
    name: str
    which: str


@dataclass(frozen=True)
class _Options:
    psi_bins: int
    chisquare: ChiSquareMode
    tokenizer: Callable[[str], Sequence[str]] | None
    top_k: int
    permutations: int
    max_texts: int
    seed: int


def _check_options(
    drift_share: float, psi_bins: int, top_k: int, permutations: int, max_texts: int, workers: int
) -> None:
    def is_int(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if isinstance(drift_share, bool) or not isinstance(drift_share, int | float) or not 0 < drift_share <= 1:
        raise ValidationError(f"drift_share must be a number in (0, 1], got {drift_share!r}")
    if not is_int(psi_bins) or psi_bins < 2:
        raise ValidationError(f"psi_bins must be an integer >= 2, got {psi_bins!r}")
    if not is_int(top_k) or top_k < 1:
        raise ValidationError(f"top_k must be an integer >= 1, got {top_k!r}")
    if not is_int(permutations) or permutations < 100:
        raise ValidationError(
            f"permutations must be an integer >= 100, got {permutations!r}: a permutation p-value is at "
            "least 1/(permutations + 1) and must be able to fall below 0.05/4"
        )
    if not is_int(max_texts) or max_texts < 1:
        raise ValidationError(f"max_texts must be an integer >= 1, got {max_texts!r}")
    if not is_int(workers) or workers < 1:
        raise ValidationError(f"workers must be an integer >= 1, got {workers!r}")


def _sample_columns(sample: Any, which: str) -> tuple[dict[str, _Column], int]:
    import pyarrow as pa

    if isinstance(sample, pa.Table | pa.RecordBatch):
        names = list(sample.schema.names)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValidationError(
                f"the {which} table has duplicate column names: {', '.join(map(repr, dupes))}", columns=dupes
            )
        items: list[tuple[Any, Any]] = [(n, sample.column(n)) for n in names]
    elif isinstance(sample, Mapping):
        items = list(sample.items())
    else:
        raise ValidationError(
            f"the {which} sample must be a mapping of column name to values or a pyarrow.Table, "
            f"got {type(sample).__name__}"
        )
    if not items:
        raise ValidationError(f"the {which} sample has no columns")
    cols: dict[str, _Column] = {}
    for name, values in items:
        if not isinstance(name, str) or not name:
            raise ValidationError(f"column names must be non-empty strings; the {which} sample has {name!r}")
        cols[name] = _as_column(values, name, which)
    lengths = {c.length for c in cols.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{n!r}: {c.length}" for n, c in cols.items())
        raise ValidationError(f"the columns of the {which} sample differ in length ({sizes})")
    rows = lengths.pop()
    if rows == 0:
        raise ValidationError(f"the {which} sample has no rows; drift needs at least one value per column")
    return cols, rows


def _column_names(
    ref: Mapping[str, _Column], cur: Mapping[str, _Column], columns: Sequence[str] | None
) -> list[str]:
    if columns is not None:
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise ValidationError(f"columns must be a list of column names, got {columns!r}")
        names = list(dict.fromkeys(columns))
        if not names:
            raise ValidationError("columns is empty: name at least one column to compare")
        for which, cols in (("reference", ref), ("current", cur)):
            missing = [n for n in names if n not in cols]
            if missing:
                raise ValidationError(
                    f"the {which} sample has no column {', '.join(map(repr, missing))}; "
                    f"it has {', '.join(map(repr, cols))}",
                    columns=missing,
                )
        return names
    only_ref = [n for n in ref if n not in cur]
    only_cur = [n for n in cur if n not in ref]
    if only_ref or only_cur:
        parts = []
        if only_ref:
            parts.append(f"only in the reference: {', '.join(map(repr, only_ref))}")
        if only_cur:
            parts.append(f"only in the current sample: {', '.join(map(repr, only_cur))}")
        raise ValidationError(
            f"the samples have different columns ({'; '.join(parts)}); pass columns=[...] to compare "
            "the shared ones",
            only_reference=only_ref,
            only_current=only_cur,
        )
    return list(ref)


def _as_column(values: Any, name: str, which: str) -> _Column:
    import pyarrow as pa

    where = f"column {name!r} of the {which} sample"
    if isinstance(values, pa.Array | pa.ChunkedArray):
        data: Any = values
    elif isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValidationError(f"{where} must be 1-dimensional, got shape {values.shape}")
        if values.dtype.kind in "fiub":
            return _Column(
                values,
                {"f": "float", "i": "int", "u": "int", "b": "bool"}[values.dtype.kind],
                len(values),
                name,
                which,
            )
        if values.dtype.kind not in "UO":
            raise ValidationError(
                f"{where} has numpy dtype {values.dtype}; supported: numbers, booleans and strings"
            )
        data = _to_arrow(values, where)
    elif isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValidationError(
            f"{where} must be a list, numpy array or pyarrow array of values, got {type(values).__name__}"
        )
    else:
        data = _to_arrow(list(values), where)
    t = data.type
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        family = "float"
    elif pa.types.is_integer(t):
        family = "int"
    elif pa.types.is_boolean(t):
        family = "bool"
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t):
        family = "string"
    elif pa.types.is_dictionary(t):
        family = "dictionary"
    elif pa.types.is_null(t):
        family = "null"
    else:
        raise ValidationError(
            f"{where} has type {t}; supported: numbers, booleans, strings and dictionary (categorical) "
            "columns; convert dates and times to numbers first"
        )
    return _Column(data, family, len(data), name, which)


def _is_string_view(t: Any) -> bool:
    import pyarrow as pa

    check = getattr(pa.types, "is_string_view", None)
    return bool(check(t)) if check is not None else False


def _arrow_to_numpy(arr: Any) -> npt.NDArray[Any]:
    """A pyarrow array of numbers or booleans as numpy, read from its buffers (entries at null positions
    are whatever the buffer holds: mask them with :func:`_arrow_valid`).

    Not ``Array.to_numpy`` (nor ``fill_null`` or ``pa.scalar``): pyarrow goes through its pandas layer
    there and imports pandas (half a second on first use) wherever pandas is installed."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks != 1 else arr.chunk(0)
    n, offset = len(arr), arr.offset
    if n == 0:
        return np.zeros(0, dtype=bool if pa.types.is_boolean(arr.type) else np.float64)
    buffer = arr.buffers()[1]
    if pa.types.is_boolean(arr.type):
        return _unpack_bits(buffer, offset, n)
    dtype = np.dtype(_NUMPY_TYPES[str(arr.type)])
    return np.frombuffer(buffer, dtype=dtype, count=n, offset=offset * dtype.itemsize)


def _unpack_bits(buffer: Any, offset: int, n: int) -> npt.NDArray[np.bool_]:
    bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
    out: npt.NDArray[np.bool_] = bits[offset : offset + n].astype(bool)
    return out


def _arrow_valid(arr: Any) -> npt.NDArray[np.bool_]:
    """True where a (non-chunked) pyarrow array holds a value."""
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return _unpack_bits(arr.buffers()[0], arr.offset, len(arr))


_NUMPY_TYPES = {
    "int8": "i1",
    "int16": "i2",
    "int32": "i4",
    "int64": "i8",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
    "halffloat": "f2",
    "float": "f4",
    "double": "f8",
}


def _to_arrow(values: Any, where: str) -> Any:
    import pyarrow as pa

    # NaN in a float column is missing anyway (dropped with the nulls); NaN used as the missing marker of a
    # string column (pandas' habit) is turned into None. pa.array imports pandas where it is installed
    # (pyarrow's own check for pandas inputs); numbers in numpy arrays never come here.
    errors = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)
    try:
        return pa.array(values)
    except errors as first:
        cleaned = [None if isinstance(v, float) and v != v else v for v in values]
        try:
            return pa.array(cleaned)
        except errors:
            raise ValidationError(
                f"{where} mixes value types or holds unsupported values ({first}); a column holds "
                "numbers, booleans or strings, one kind per column"
            ) from first


def _non_missing_count(col: _Column) -> int:
    if isinstance(col.data, np.ndarray):
        if col.family == "float":
            return int(np.count_nonzero(np.isfinite(col.data)))
        return col.length
    return int(col.length - col.data.null_count)


def _present(col: _Column) -> int:
    """The number of values that are not missing (null, NaN); +-inf is a value here."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.family == "null":
        return 0
    data = col.data
    if isinstance(data, np.ndarray):
        return int(np.count_nonzero(~np.isnan(data))) if col.family == "float" else col.length
    n = int(col.length - data.null_count)
    if n and pa.types.is_floating(data.type):
        n -= int(pc.sum(pc.is_nan(data).cast(pa.int64())).as_py() or 0)
    return n


# The kind of a column without any value on either side (nothing to infer from): by the type it was given.
_MISSING_KINDS: dict[str, ColumnKind] = {"float": "numeric", "int": "numeric"}


def _infer(col: _Column, name: str) -> ColumnKind:
    import pyarrow.compute as pc

    if col.family == "float":  # by its type, whatever it holds (only NaN and +-inf: not judged, below)
        return "numeric"
    if col.family == "null" or _non_missing_count(col) == 0:
        raise ValidationError(
            f"column {name!r} of the reference sample has only missing values: its kind cannot be "
            "inferred and there is nothing to compare; drop the column or fix what produces it",
            column=name,
        )
    if col.family in ("bool", "dictionary"):
        return "categorical"
    if col.family == "int":
        distinct = int(pc.count_distinct(_category_values(col)).as_py())
        return "categorical" if distinct <= INTEGER_CARDINALITY_LIMIT else "numeric"
    # strings
    distinct = int(pc.count_distinct(col.data).as_py())
    return "text" if distinct > _non_missing_count(col) * TEXT_DISTINCT_SHARE else "categorical"


def _all_missing(col: _Column, kind: str) -> ValidationError:
    return ValidationError(
        f"column {col.name!r} of the {col.which} sample has only missing values ({col.length} rows); a "
        f"{kind} column needs at least one value on each side: drop the column or fix what produces it",
        column=col.name,
    )


def _numeric_values(col: _Column) -> tuple[FloatArray, int, int]:
    """Finite values as float64 (there may be none), the number of missing ones (null, NaN) and of infinite
    ones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.family not in ("float", "int", "bool", "null"):
        raise ValidationError(
            f"column {col.name!r} is compared as numeric but the {col.which} sample holds "
            f"{'strings' if col.family == 'string' else 'categories'}; pass kinds={{{col.name!r}: "
            "'categorical'}} or fix the column",
            column=col.name,
        )
    if col.family == "null":
        raise _all_missing(col, "numeric")
    data = col.data
    nulls = 0
    if not isinstance(data, np.ndarray):
        nulls = int(data.null_count)
        if nulls:
            data = pc.drop_null(data)
        if isinstance(data, pa.ChunkedArray):
            data = data.combine_chunks() if data.num_chunks != 1 else data.chunk(0)
        if pa.types.is_decimal(data.type) or pa.types.is_boolean(data.type):
            data = data.cast(pa.float64())
        data = _arrow_to_numpy(data)
    values = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(values)
    infinite = 0
    if not finite.all():
        infinite = int(np.count_nonzero(np.isinf(values)))
        nulls += int(values.size - np.count_nonzero(finite)) - infinite
        values = values[finite]
    return values, nulls, infinite


def _category_values(col: _Column) -> Any:
    """The column as a pyarrow array of categories."""
    if col.family == "null":
        raise _all_missing(col, "categorical")
    if isinstance(col.data, np.ndarray):
        return _numpy_to_arrow(col.data)  # NaN of a float column: dropped as missing by _value_counts
    return col.data


def _numpy_to_arrow(values: npt.NDArray[Any]) -> Any:
    """A numpy array of numbers or booleans as a pyarrow array, built from its buffer: ``pa.array`` would
    import pandas (pyarrow checks every input for pandas types), half a second on first use."""
    import pyarrow as pa

    if values.dtype.kind == "b":
        bits = np.packbits(values.astype(bool, copy=False), bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), values.size, [None, pa.py_buffer(bits)])
    data = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(data.dtype), data.size, [None, pa.py_buffer(data)])


def _texts(col: _Column) -> tuple[list[str], int]:
    import pyarrow as pa

    if col.family == "null":
        raise _all_missing(col, "text")
    data = col.data
    if col.family == "dictionary" and pa.types.is_string(data.type.value_type):
        data = data.cast(pa.string())
    elif col.family != "string":
        raise ValidationError(
            f"column {col.name!r} is compared as text but the {col.which} sample holds "
            f"{col.family} values; text columns hold strings",
            column=col.name,
        )
    texts = [t for t in data.to_pylist() if t is not None]
    if not texts:
        raise _all_missing(col, "text")
    return texts, col.length - len(texts)


# ============================================================================================== dispatch


def _column_drift(name: str, kind: ColumnKind, ref: _Column, cur: _Column, options: _Options) -> ColumnDrift:
    started = time.perf_counter()
    if not _present(ref) or not _present(cur):
        return _with_seconds(_missing_drift(name, kind, ref, cur), time.perf_counter() - started)
    if kind == "numeric":
        r, r_missing, r_inf = _numeric_values(ref)
        c, c_missing, c_inf = _numeric_values(cur)
        if not r.size or not c.size:  # only NaN and +-inf on a side (an overflow upstream): nothing to test
            return _with_seconds(_missing_drift(name, kind, ref, cur), time.perf_counter() - started)
        result = _numeric_drift(name, r, c, r_missing, c_missing, options=options)
        if r_inf or c_inf:
            note = (
                f"{r_inf:,} infinite values in the reference sample and {c_inf:,} infinite values in the "
                "current sample are left out of the tests (an overflow or a division by zero upstream?)"
            )
            result = replace(
                result, reference_infinite=r_inf, current_infinite=c_inf, notes=(*result.notes, note)
            )
    elif kind == "categorical":
        result = _categorical_drift(name, ref, cur, options=options)
    else:
        r_texts, r_missing = _texts(ref)
        c_texts, c_missing = _texts(cur)
        result = _text_drift(name, r_texts, c_texts, r_missing, c_missing, options)
    if kind != "text" and result.statistic_kind == "p_value":
        result = _with_power(result, options.chisquare)
    return _with_seconds(result, time.perf_counter() - started)


def _missing_drift(name: str, kind: ColumnKind, ref: _Column, cur: _Column) -> ColumnDrift:
    """A column with no value on one side (numeric: no finite one), which no test can compare (Evidently
    raises). None in the current sample: the feature stopped arriving, which is drift (scored by the share of
    values missing or infinite, 1). None in the reference: nothing to compare with, so not judged (no score,
    not drifted)."""
    counts = {}
    for col in (ref, cur):  # (values, missing, infinite); a side with values is checked against the kind
        if not _present(col):
            counts[col.which] = (0, col.length, 0)
        elif kind == "numeric":
            values, missing, infinite = _numeric_values(col)
            counts[col.which] = (int(values.size), missing, infinite)
        elif kind == "categorical":
            _, value_counts, missing = _value_counts(col)
            counts[col.which] = (int(value_counts.sum()), missing, 0)
        else:
            texts, missing = _texts(col)
            counts[col.which] = (len(texts), missing, 0)
    (n_r, m_r, i_r), (n_c, m_c, i_c) = counts["reference"], counts["current"]

    def none_in(col: _Column, missing: int, infinite: int) -> str:
        if not infinite:
            return f"all {col.length:,} values are missing in the {col.which} sample"
        return (
            f"none of the {col.length:,} values is finite ({missing:,} missing, {infinite:,} infinite) in "
            f"the {col.which} sample"
        )

    judged = n_r > 0
    if judged:
        before = f"{_share(m_r, ref.length):.1%}" if m_r else "none"
        note = (
            f"{none_in(cur, m_c, i_c)} ({before} in the reference): a column that stopped arriving counts as "
            "drifted"
        )
    else:
        note = (
            f"{none_in(ref, m_r, i_r)}: there is nothing to compare the current values with, so the column "
            "is not judged (nor counted as drifted)"
        )
    return ColumnDrift(
        name=name,
        kind=kind,
        test="missing",
        statistic=_share(m_c + i_c, cur.length) if judged else math.nan,
        threshold=1.0,
        drifted=judged,
        reference_count=n_r,
        current_count=n_c,
        reference_missing=m_r,
        current_missing=m_c,
        reference_infinite=i_r,
        current_infinite=i_c,
        notes=(note,),
        judged=judged,
    )


def _with_power(col: ColumnDrift, chisquare: ChiSquareMode) -> ColumnDrift:
    """Add the smallest p-value the deciding test can give at these sample sizes (that of two samples with
    nothing in common), and a note where even that does not reach the threshold: 3 values against 3 are
    "no drift" at best p = 0.1 however different they are, which is too few values to tell, not a match."""
    from scipy import special

    n_r, n_c = col.reference_count, col.current_count
    n = n_r + n_c
    k = col.stats["distinct_values"] if col.kind == "numeric" else col.stats["chisquare_dof"] + 1
    if col.test == "ks":  # exact: both orders of two separated samples, out of C(n, n_r) arrangements
        log_arrangements = math.lgamma(n + 1) - math.lgamma(n_r + 1) - math.lgamma(n_c + 1)
        smallest = min(1.0, 2 * math.exp(-log_arrangements))
    elif k < 2:  # one value, the same on both sides: nothing could differ
        return col
    elif col.test == "z":  # |z| is at most sqrt(n), when each sample holds one of the two values
        smallest = float(2 * special.ndtr(-math.sqrt(n)))
    elif chisquare == "two-sample":  # Pearson's statistic on a 2 x k table is at most n
        smallest = float(special.chdtrc(k - 1, n))
    else:  # Evidently's goodness-of-fit statistic is unbounded (a new category makes it infinite)
        smallest = 0.0
    stats = {**col.stats, "smallest_p_value": smallest}
    if _drifted(col.test, smallest, col.threshold):
        return replace(col, stats=stats)
    note = (
        f"with {n_r:,} reference and {n_c:,} current values the {col.test_name} cannot reach the "
        f"{_fmt(col.threshold)} threshold (its smallest value here is {_fmt(smallest)}): no drift here means "
        "too few values to tell, not the same distribution"
    )
    return replace(col, stats=stats, notes=(*col.notes, note))


def _with_seconds(col: ColumnDrift, seconds: float) -> ColumnDrift:
    return replace(col, seconds=seconds)


def _drifted(test: str, statistic: float, threshold: float) -> bool:
    if test == "ks":
        return statistic <= threshold  # evidently: p_value <= threshold
    if test in _P_VALUE_TESTS:
        return statistic < threshold
    return statistic >= threshold


# =============================================================================================== numeric


def _numeric_drift(
    name: str,
    r: FloatArray,
    c: FloatArray,
    r_missing: int,
    c_missing: int,
    *,
    options: _Options,
    test: str | None = None,
    threshold: float | None = None,
) -> ColumnDrift:
    r_s = np.sort(r)
    c_s = np.sort(c)
    n_r, n_c = r_s.size, c_s.size
    ks_d, wasserstein, distinct = _merged_stats(r_s, c_s)
    ks_d, ks_p = _ks_p_value(r_s, c_s, ks_d)
    std_r = _std(r)
    norm = _wasserstein_norm(std_r, r_s)
    normed = wasserstein / norm
    q1, q3 = _quantiles_sorted(r_s, np.array([0.25, 0.75]))
    robust_std = (float(q3) - float(q1)) / IQR_PER_STD  # Python floats: beyond 1.8e308 inf, no warning
    stats: dict[str, Any] = {
        "ks_statistic": ks_d,
        "ks_p_value": ks_p,
        "wasserstein": wasserstein,
        "wasserstein_normed": normed,
        "psi": _psi_sorted(r_s, c_s, options.psi_bins),
        "mean_reference": float(np.mean(r)),
        "mean_current": float(np.mean(c)),
        "std_reference": std_r,
        "std_reference_robust": robust_std,
        "std_current": _std(c),
        "distinct_values": distinct,
    }
    if test is None:
        if n_r <= SMALL_SAMPLE:
            test = "ks" if distinct > FEW_VALUES else ("chisquare" if distinct > 2 else "z")
        else:
            test = "wasserstein" if distinct > FEW_VALUES else "jensenshannon"
    if test == "ks":
        statistic = ks_p
    elif test == "wasserstein":
        statistic = normed
    else:
        values = np.union1d(_distinct_sorted(r_s), _distinct_sorted(c_s))
        ref_counts = _counts_sorted(r_s, values)
        cur_counts = _counts_sorted(c_s, values)
        statistic = _category_test(test, ref_counts, cur_counts, options.chisquare)
    if threshold is None:
        threshold = P_VALUE_THRESHOLD if test in _P_VALUE_TESTS else DISTANCE_THRESHOLD
    drifted = _drifted(test, float(statistic), threshold)
    notes: list[str] = []
    if test == "wasserstein":
        notes = _wasserstein_notes(r_s, c_s, stats, norm, threshold, drifted)
    return ColumnDrift(
        name=name,
        kind="numeric",
        test=test,
        statistic=float(statistic),
        threshold=threshold,
        drifted=drifted,
        reference_count=n_r,
        current_count=n_c,
        reference_missing=r_missing,
        current_missing=c_missing,
        stats=stats,
        plot=_histogram(r_s, c_s),
        notes=tuple(notes),
    )


def _wasserstein_notes(
    r_s: FloatArray, c_s: FloatArray, stats: Mapping[str, Any], norm: float, threshold: float, drifted: bool
) -> list[str]:
    """What to read beside a Wasserstein verdict that a handful of extreme values made. The distance is a
    mean over all values and its norm a standard deviation, and both are led by outliers: a few extreme
    reference values inflate the norm until a shift of the whole bulk reads as none, and a few extreme
    current values carry the distance past the threshold alone. The verdict stays Evidently's."""
    robust, ks_p = stats["std_reference_robust"], stats["ks_p_value"]
    # Heavy tails on both sides alone put the distance in the robust spread above the threshold: the K-S
    # test (ranks: outliers weigh as any value) must see a difference too.
    if not drifted and 0 < 3 * robust < stats["std_reference"] and ks_p <= P_VALUE_THRESHOLD:
        robust_normed = stats["wasserstein"] / robust
        if robust_normed >= threshold:
            return [
                f"the reference's standard deviation ({_fmt(stats['std_reference'])}) is inflated by a few "
                f"extreme values (its interquartile range implies {_fmt(robust)}); in that spread the "
                f"distance is {_fmt(robust_normed)}, at or above the {_fmt(threshold)} threshold, so a shift "
                f"of most values may be hidden (K-S p-value {_fmt(ks_p)}, PSI {_fmt(stats['psi'])})"
            ]
    lo, hi = r_s[0], r_s[-1]
    beyond = int(np.searchsorted(c_s, lo, side="left") + c_s.size - np.searchsorted(c_s, hi, "right"))
    if drifted and 0 < beyond <= c_s.size / 100:  # a handful: more beyond the range is a shift of its own
        inside = _merged_stats(r_s, np.clip(c_s, lo, hi))[1] / norm
        if inside < threshold:
            return [
                f"{beyond:,} current values ({beyond / c_s.size:.2%}) lie beyond the reference's range "
                f"[{_fmt(float(lo))}, {_fmt(float(hi))}] and make the verdict: moved to its edge, the normed "
                f"distance is {_fmt(inside)}, below the {_fmt(threshold)} threshold (K-S p-value "
                f"{_fmt(ks_p)}, PSI {_fmt(stats['psi'])})"
            ]
    return []


def _merged_stats(r_s: FloatArray, c_s: FloatArray) -> tuple[float, float, int]:
    """KS statistic, Wasserstein-1 distance and number of distinct values of two sorted samples.

    The samples are merged in linear time (ties: reference first) and both empirical CDFs read off
    cumulative counts. The KS statistic takes |F_r - F_c| only at the last element of each run of equal
    values, where both CDFs are complete, as scipy's ``ks_2samp`` does with ``searchsorted(side='right')``;
    the Wasserstein distance is the sum of |F_r - F_c| times the gap to the next value, as in scipy's
    ``wasserstein_distance`` (gaps inside a run of equal values are 0)."""
    n_r, n_c = r_s.size, c_s.size
    n = n_r + n_c
    pos = np.searchsorted(c_s, r_s, side="left")
    pos += np.arange(n_r, dtype=pos.dtype)
    is_ref = np.zeros(n, dtype=bool)
    is_ref[pos] = True
    merged = np.empty(n, dtype=np.float64)
    merged[pos] = r_s
    merged[~is_ref] = c_s
    count: type[np.signedinteger[Any]] = np.int32 if n < 2**31 else np.int64  # int32 sums: 2x faster
    cum_r: npt.NDArray[np.signedinteger[Any]] = np.cumsum(is_ref, dtype=count)
    cum_c: npt.NDArray[np.signedinteger[Any]] = np.arange(1, n + 1, dtype=count)
    cum_c -= cum_r
    diff: FloatArray = cum_r / n_r
    diff -= cum_c / n_c
    np.abs(diff, out=diff)
    gaps = np.diff(merged)
    wasserstein = float(np.dot(diff[:-1], gaps))
    run_ends = gaps != 0
    ks = float(diff[:-1][run_ends].max()) if run_ends.any() else 0.0
    return ks, wasserstein, int(np.count_nonzero(run_ends)) + 1


def _ks_p_value(r_s: FloatArray, c_s: FloatArray, d: float) -> tuple[float, float]:
    """Statistic and two-sided p-value of the two-sample KS test.

    Up to KS_EXACT_MAX values per sample this is scipy's ``ks_2samp`` itself (exact distribution). Above,
    ``ks_2samp`` uses ``kstwo.sf(d, round(n1 n2 / (n1 + n2)))``, which is what is used here up to an
    effective size of KS_EXACT_MAX; beyond that, Kolmogorov's limiting distribution
    ``kstwobign.sf(sqrt(n) d)``, because ``kstwo.sf`` takes 0.3-0.4 s per call for effective sizes between
    1e5 and 1e6 (1,000,000 rows per sample is 500,000) and agrees with the limit to three digits there. A
    KS test that decides a column has at most 1,000 reference values, so an effective size below 1,000:
    its p-value is always scipy's."""
    from scipy import stats

    n_r, n_c = r_s.size, c_s.size
    if max(n_r, n_c) <= KS_EXACT_MAX:
        with warnings.catch_warnings():
            # "Exact calculation unsuccessful. Switching to method=asymp": scipy's own fallback, taken
            # alike by Evidently's call
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ks_2samp(r_s, c_s)
        return float(res.statistic), float(res.pvalue)
    m, n = sorted([float(n_r), float(n_c)], reverse=True)
    en = float(np.round(m * n / (m + n)))
    p = stats.kstwo.sf(d, en) if en <= KS_EXACT_MAX else stats.kstwobign.sf(math.sqrt(en) * d)
    return d, float(np.clip(p, 0.0, 1.0))


def _distinct_sorted(x_s: FloatArray) -> FloatArray:
    """The distinct values of a sorted array, in order."""
    if x_s.size == 0:
        return x_s
    keep = np.empty(x_s.size, dtype=bool)
    keep[0] = True
    np.not_equal(x_s[1:], x_s[:-1], out=keep[1:])
    out: FloatArray = x_s[keep]
    return out


def _counts_sorted(x_s: FloatArray, values: FloatArray) -> IntArray:
    left = np.searchsorted(x_s, values, side="left")
    right = np.searchsorted(x_s, values, side="right")
    counts: IntArray = (right - left).astype(np.int64)
    return counts


def _quantiles_sorted(x_s: FloatArray, q: FloatArray) -> FloatArray:
    """numpy's default ('linear') quantiles of an already sorted array."""
    pos = q * (x_s.size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, x_s.size - 1)
    frac = pos - lo
    with np.errstate(over="ignore", invalid="ignore"):
        out: FloatArray = x_s[lo] + (x_s[hi] - x_s[lo]) * frac
    overflowed = ~np.isfinite(out)  # a span near the float range: x_hi - x_lo overflows, the mix does not
    if overflowed.any():
        out[overflowed] = (x_s[lo] * (1 - frac) + x_s[hi] * frac)[overflowed]
    return out


def _std(x: FloatArray) -> float:
    """np.std, without the overflow its squares hit beyond about 1e154."""
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(np.std(x))
    if np.isfinite(std) or x.size == 0:
        return std
    scale = float(np.max(np.abs(x)))
    return float(np.std(x / scale)) * scale


def _wasserstein_norm(std_r: float, r_s: FloatArray) -> float:
    """The reference's standard deviation, or Evidently's WASSERSTEIN_MIN_NORM where it has none.

    Evidently divides by ``max(std, 0.001)``, an absolute floor: a column of small numbers (std 1e-4, a rate
    or a length in km) was measured in thousandths, and even a shift of many deviations stayed under 0.1.
    The floor is kept only for a reference without spread: np.std of a constant is 0 or rounding noise of
    its magnitude (relative 1e-16 or so), and dividing by that would make any change infinite."""
    magnitude = max(abs(float(r_s[0])), abs(float(r_s[-1])))
    return std_r if std_r > magnitude * 1e-12 else WASSERSTEIN_MIN_NORM


def _bin_counts(x_s: FloatArray, inner_edges: FloatArray) -> IntArray:
    """Counts of a sorted sample in the bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    cuts = np.searchsorted(x_s, inner_edges, side="right")
    counts: IntArray = np.diff(cuts, prepend=0, append=x_s.size).astype(np.int64)
    return counts


def _psi(ref_share: FloatArray, cur_share: FloatArray) -> float:
    r = np.maximum(ref_share, PSI_EPSILON)
    c = np.maximum(cur_share, PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def _psi_sorted(r_s: FloatArray, c_s: FloatArray, bins: int) -> float:
    """PSI over ``bins`` bins cut at the reference's quantiles (repeated cut points merged)."""
    edges = np.unique(_quantiles_sorted(r_s, np.arange(1, bins, dtype=np.float64) / bins))
    return _psi(_bin_counts(r_s, edges) / r_s.size, _bin_counts(c_s, edges) / c_s.size)


def _histogram(r_s: FloatArray, c_s: FloatArray) -> dict[str, Any]:
    """Shares of both samples in HISTOGRAM_BINS equal bins over the central 99% of both (outliers go to
    the end bins): what the HTML report draws."""
    q = np.array([0.005, 0.995])
    lo_r, hi_r = _quantiles_sorted(r_s, q)
    lo_c, hi_c = _quantiles_sorted(c_s, q)
    lo, hi = float(min(lo_r, lo_c)), float(max(hi_r, hi_c))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    return {
        "type": "histogram",
        "edges": edges.tolist(),
        "reference": (_bin_counts(r_s, edges[1:-1]) / r_s.size).tolist(),
        "current": (_bin_counts(c_s, edges[1:-1]) / c_s.size).tolist(),
    }


# =========================================================================================== categorical


def _category_test(test: str, ref_counts: IntArray, cur_counts: IntArray, chisquare: ChiSquareMode) -> float:
    if test == "chisquare":
        return _chisquare(ref_counts, cur_counts, chisquare)[1]
    if test == "z":
        return _z_test(ref_counts, cur_counts)
    return _jensenshannon(ref_counts.astype(np.float64), cur_counts.astype(np.float64))


def _chisquare(ref_counts: IntArray, cur_counts: IntArray, mode: ChiSquareMode) -> tuple[float, float, int]:
    """Chi-square over the categories: (statistic, p-value, degrees of freedom).

    ``two-sample``: Pearson's test of homogeneity on the 2 x k table of counts (``scipy.stats.
    chi2_contingency(table, correction=False)``). ``evidently``: Evidently's goodness-of-fit form, the
    current counts against the reference's scaled to the current size, as if the reference shares were
    exact; the reference's own sampling noise then inflates the statistic by about 1 + n_cur / n_ref, so
    two samples of one distribution of equal size are flagged 20-30% of the time at p < 0.05, and a
    category absent from the reference makes it infinite (p = 0)."""
    from scipy import special

    k = ref_counts.size
    if k < 2:
        return 0.0, 1.0, 0
    if mode == "evidently":
        k_norm = float(cur_counts.sum()) / float(ref_counts.sum())
        expected = ref_counts * k_norm
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = (cur_counts.astype(np.float64) - expected) ** 2 / expected
    else:
        table = np.vstack((ref_counts, cur_counts)).astype(np.float64)
        expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
        terms = (table - expected) ** 2 / expected
    statistic = float(terms.sum())
    return statistic, float(special.chdtrc(k - 1, statistic)), k - 1


def _z_test(ref_counts: IntArray, cur_counts: IntArray) -> float:
    """Evidently's two-proportion z-test for at most two categories; two-sided p-value."""
    from scipy import special

    if ref_counts.size < 2:
        return 1.0  # one value, the same on both sides
    n1, n2 = float(ref_counts.sum()), float(cur_counts.sum())
    p1, p2 = float(ref_counts[1]) / n1, float(cur_counts[1]) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - special.ndtr(abs(z))))


def _js_columns(p: FloatArray, q: FloatArray) -> FloatArray:
    """Jensen-Shannon distance (natural log, no smoothing) between the columns of two count matrices, as
    ``scipy.spatial.distance.jensenshannon(p, q, axis=0)`` computes it."""
    from scipy import special

    p = p / p.sum(axis=0, keepdims=True)
    q = q / q.sum(axis=0, keepdims=True)
    m = (p + q) / 2.0
    js = special.rel_entr(p, m).sum(axis=0) + special.rel_entr(q, m).sum(axis=0)
    out: FloatArray = np.sqrt(np.maximum(js, 0.0) / 2.0)
    return out


def _jensenshannon(p: FloatArray, q: FloatArray) -> float:
    return float(_js_columns(p[:, None], q[:, None])[0])


def _value_counts(col: _Column) -> tuple[Any, IntArray, int]:
    """Distinct non-missing values (pyarrow array), their counts, and the number of missing values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = _category_values(col)
    counted = pc.value_counts(data)
    values = counted.field("values")
    counts = _arrow_to_numpy(counted.field("counts")).astype(np.int64, copy=False)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    valid = _arrow_valid(values)
    if pa.types.is_floating(values.type):
        with np.errstate(invalid="ignore"):
            valid &= ~np.isnan(_arrow_to_numpy(values).astype(np.float64))
    missing = int(counts[~valid].sum())
    if not valid.all():
        values = values.filter(_numpy_to_arrow(valid))
        counts = counts[valid]
    if counts.size == 0:
        raise _all_missing(col, "categorical")
    return values, counts, missing


def _align(
    name: str, ref_values: Any, ref_counts: IntArray, cur_values: Any, cur_counts: IntArray
) -> tuple[Any, IntArray, IntArray, int]:
    """Counts of both samples over the union of categories (reference's first, then new ones)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if cur_values.type != ref_values.type:
        family_r, family_c = _value_family(ref_values.type), _value_family(cur_values.type)
        if family_r != family_c:
            raise ValidationError(
                f"column {name!r} holds {family_r} in the reference but {family_c} in the current "
                "sample; both sides of a column need the same kind of values",
                column=name,
            )
        if family_r == "numbers":  # int32 against int64, or integers against floats
            ref_values, cur_values = ref_values.cast(pa.float64()), cur_values.cast(pa.float64())
        else:  # string against large_string
            cur_values = cur_values.cast(ref_values.type)
    index = pc.index_in(cur_values, value_set=ref_values)
    idx = _arrow_to_numpy(index).astype(np.int64)
    new = ~_arrow_valid(index)
    k_r, k_new = ref_counts.size, int(np.count_nonzero(new))
    ref_all = np.concatenate((ref_counts, np.zeros(k_new, dtype=np.int64)))
    cur_all = np.zeros(k_r + k_new, dtype=np.int64)
    cur_all[idx[~new]] = cur_counts[~new]
    cur_all[k_r:] = cur_counts[new]
    labels = pa.concat_arrays([ref_values, cur_values.filter(_numpy_to_arrow(new))]) if k_new else ref_values
    return labels, ref_all, cur_all, k_new


def _value_family(t: Any) -> str:
    import pyarrow as pa

    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numbers"
    if pa.types.is_boolean(t):
        return "booleans"
    return "strings"


def _categorical_drift(name: str, ref: _Column, cur: _Column, *, options: _Options) -> ColumnDrift:
    r_values, r_counts, r_missing = _value_counts(ref)
    c_values, c_counts, c_missing = _value_counts(cur)
    labels, ref_counts, cur_counts, k_new = _align(name, r_values, r_counts, c_values, c_counts)
    n_r, n_c = int(ref_counts.sum()), int(cur_counts.sum())
    distinct = ref_counts.size
    test = ("chisquare" if distinct > 2 else "z") if n_r <= SMALL_SAMPLE else "jensenshannon"
    chi_stat, chi_p, dof = _chisquare(ref_counts, cur_counts, options.chisquare)
    js = _jensenshannon(ref_counts.astype(np.float64), cur_counts.astype(np.float64))
    statistic = {"chisquare": chi_p, "jensenshannon": js}.get(test)
    if statistic is None:
        statistic = _z_test(ref_counts, cur_counts)
    threshold = P_VALUE_THRESHOLD if test in _P_VALUE_TESTS else DISTANCE_THRESHOLD
    ref_share, cur_share = ref_counts / n_r, cur_counts / n_c
    new_share = float(cur_counts[ref_counts.size - k_new :].sum()) / n_c if k_new else 0.0
    stats: dict[str, Any] = {
        "chisquare_statistic": chi_stat,
        "chisquare_p_value": chi_p,
        "chisquare_dof": dof,
        "jensenshannon": js,
        "psi": _psi(ref_share, cur_share),
        "categories_reference": int(np.count_nonzero(ref_counts)),
        "categories_current": int(np.count_nonzero(cur_counts)),
        "new_categories": k_new,
        "new_category_share": new_share,
        "missing_categories": int(np.count_nonzero((ref_counts > 0) & (cur_counts == 0))),
    }
    notes: list[str] = []
    categories = int(np.count_nonzero(ref_counts + cur_counts))
    # E[JS divergence] of two samples of one distribution ~ (k - 1) / 8 * (1/n_r + 1/n_c) (second-order
    # expansion): sparse categories keep the distance of identical distributions well above 0
    noise = math.sqrt(max(categories - 1, 0) / 8 * (1 / n_r + 1 / n_c))
    stats["jensenshannon_noise"] = noise
    if test == "jensenshannon" and noise >= DISTANCE_THRESHOLD / 2:
        notes.append(
            f"sampling noise alone puts the Jensen-Shannon distance near {noise:.3f} here ({categories} "
            f"categories, {n_r:,} and {n_c:,} values), so the {DISTANCE_THRESHOLD} threshold can flag two "
            f"samples of one distribution; the chi-square p-value ({_fmt(chi_p)}) allows for sample size"
        )
    if k_new:
        shown = [_label(v) for v in labels[ref_counts.size - k_new :][:5].to_pylist()]
        more = f" and {k_new - len(shown)} more" if k_new > len(shown) else ""
        notes.append(
            f"{k_new} categor{'y' if k_new == 1 else 'ies'} the reference never had "
            f"({new_share:.1%} of current values): {', '.join(shown)}{more}"
        )
        if test == "chisquare" and options.chisquare == "evidently":
            notes.append("a category absent from the reference makes the chi-square infinite (p = 0)")
    return ColumnDrift(
        name=name,
        kind="categorical",
        test=test,
        statistic=float(statistic),
        threshold=threshold,
        drifted=_drifted(test, float(statistic), threshold),
        reference_count=n_r,
        current_count=n_c,
        reference_missing=r_missing,
        current_missing=c_missing,
        stats=stats,
        plot=_bars(labels, ref_share, cur_share),
        notes=tuple(notes),
    )


def _label(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _bars(labels: Any, ref_share: FloatArray, cur_share: FloatArray) -> dict[str, Any]:
    """The PLOT_CATEGORIES categories with the largest share on either side, plus '(other)'."""
    weight = np.maximum(ref_share, cur_share)
    k = weight.size
    top = np.argsort(-weight, kind="stable")[: min(k, PLOT_CATEGORIES)]
    names = [_label(v) for v in labels.take(_numpy_to_arrow(top.astype(np.int64))).to_pylist()]
    ref = ref_share[top].tolist()
    cur = cur_share[top].tolist()
    if k > top.size:
        names.append("(other)")
        ref.append(max(0.0, 1.0 - sum(ref)))
        cur.append(max(0.0, 1.0 - sum(cur)))
    return {"type": "bars", "labels": names, "reference": ref, "current": cur}


# ================================================================================================== text


def _text_drift(
    name: str,
    r_texts: list[str],
    c_texts: list[str],
    r_missing: int,
    c_missing: int,
    options: _Options,
) -> ColumnDrift:
    rng = np.random.default_rng(options.seed)
    notes: list[str] = []
    sampled = False
    r_count, c_count = len(r_texts), len(c_texts)
    for texts, which in ((r_texts, "reference"), (c_texts, "current")):
        if len(texts) > options.max_texts:
            keep = np.sort(rng.choice(len(texts), options.max_texts, replace=False))
            texts[:] = [texts[i] for i in keep]
            sampled = True
            notes.append(f"{which}: a random {options.max_texts:,} texts compared (max_texts)")
    r_all, c_all = len(r_texts), len(c_texts)

    def lengths(texts: list[str], words: bool) -> FloatArray:
        it: Iterable[int] = (len(t.split()) for t in texts) if words else map(len, texts)
        return np.fromiter(it, dtype=np.float64, count=len(texts))

    parts = [
        _numeric_drift(
            f"{name}.chars",
            lengths(r_texts, False),
            lengths(c_texts, False),
            0,
            0,
            options=options,
            test="ks",
        ),
        _numeric_drift(
            f"{name}.words",
            lengths(r_texts, True),
            lengths(c_texts, True),
            0,
            0,
            options=options,
            test="ks",
        ),
    ]
    tokens = _token_tests(name, r_texts, c_texts, options, rng)
    if tokens is None:
        notes.append("no tokens on one side: the token distribution and OOV tests were skipped")
        token_parts: list[ColumnDrift] = []
        token_stats: dict[str, Any] = {}
        token_plot: dict[str, Any] = {}
    else:
        token_parts, token_stats, token_plot = tokens
    parts.extend(token_parts)
    alpha = P_VALUE_THRESHOLD / len(parts)
    parts = [replace(p, threshold=alpha, drifted=_drifted(p.test, p.statistic, alpha)) for p in parts]
    adjusted = min(1.0, len(parts) * min(p.statistic for p in parts))
    stats: dict[str, Any] = {
        "chars_mean_reference": parts[0].stats["mean_reference"],
        "chars_mean_current": parts[0].stats["mean_current"],
        "words_mean_reference": parts[1].stats["mean_reference"],
        "words_mean_current": parts[1].stats["mean_current"],
        **token_stats,
        "texts_reference": r_all,
        "texts_current": c_all,
        "sampled": sampled,
    }
    return ColumnDrift(
        name=name,
        kind="text",
        test="text",
        statistic=adjusted,
        threshold=P_VALUE_THRESHOLD,
        drifted=any(p.drifted for p in parts),
        reference_count=r_count,
        current_count=c_count,
        reference_missing=r_missing,
        current_missing=c_missing,
        stats=stats,
        plot={"type": "text", "chars": parts[0].plot, "tokens": token_plot},
        parts=tuple(parts),
        notes=tuple(notes),
    )


def _tokenize(texts: list[str], options: _Options, which: str) -> tuple[list[str], IntArray]:
    tokenizer = options.tokenizer or word_tokens
    lists: list[Sequence[str]] = []
    for text in texts:
        toks = tokenizer(text)
        if isinstance(toks, str | bytes) or not isinstance(toks, Sequence):
            raise ValidationError(
                f"the tokenizer must return a list of strings, got {type(toks).__name__} for a {which} text"
            )
        lists.append(toks)
    lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    return list(chain.from_iterable(lists)), lens


def _token_tests(
    name: str, r_texts: list[str], c_texts: list[str], options: _Options, rng: np.random.Generator
) -> tuple[list[ColumnDrift], dict[str, Any], dict[str, Any]] | None:
    from scipy import sparse

    r_flat, r_lens = _tokenize(r_texts, options, "reference")
    c_flat, c_lens = _tokenize(c_texts, options, "current")
    t_r, t_c = int(r_lens.sum()), int(c_lens.sum())
    if t_r == 0 or t_c == 0:
        return None
    if options.tokenizer is not None:
        bad = next((t for t in chain(r_flat, c_flat) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValidationError(f"the tokenizer must return strings only, got {type(bad).__name__}")
    index: dict[str, int] = {}  # token -> id, in order of first appearance
    ids = np.fromiter(
        (index.setdefault(t, len(index)) for t in chain(r_flat, c_flat)), dtype=np.int64, count=t_r + t_c
    )
    vocab = list(index)
    u = len(vocab)
    ref_counts = np.bincount(ids[:t_r], minlength=u).astype(np.float64)
    cur_counts = np.bincount(ids[t_r:], minlength=u).astype(np.float64)
    k = options.top_k
    obs_js, obs_oov = _token_stats(ref_counts[:, None], cur_counts[:, None], k)

    # Permutations of whole texts: X is the text x token count matrix, a permutation a 0/1 column
    # saying which texts play "current"; X.T @ L gives the current counts of a block of permutations.
    n_r, n_c = len(r_texts), len(c_texts)
    n_docs = n_r + n_c
    lens = np.concatenate((r_lens, c_lens))
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), lens)
    x_t = sparse.csr_matrix((np.ones(ids.size), (ids, doc)), shape=(u, n_docs))
    total = ref_counts + cur_counts
    block = max(1, min(options.permutations, 4_000_000 // max(u, 1)))
    js_perm: list[FloatArray] = []
    oov_perm: list[FloatArray] = []
    done = 0
    while done < options.permutations:
        b = min(block, options.permutations - done)
        labels = np.zeros((n_docs, b), dtype=np.float64)
        for j in range(b):
            labels[rng.permutation(n_docs)[:n_c], j] = 1.0
        cur_b = np.asarray(x_t @ labels)
        js_b, oov_b = _token_stats(total[:, None] - cur_b, cur_b, k)
        js_perm.append(js_b)
        oov_perm.append(oov_b)
        done += b
    js_all, oov_all = np.concatenate(js_perm), np.concatenate(oov_perm)
    r = options.permutations
    # ">=" with a relative tolerance: ties count against drift (conservative)
    p_js = (1 + int(np.count_nonzero(js_all >= obs_js[0] * (1 - 1e-9)))) / (r + 1)
    p_oov = (1 + int(np.count_nonzero(oov_all >= obs_oov[0] * (1 - 1e-9)))) / (r + 1)

    # The reference's own held-out OOV rate: each text's tokens against the vocabulary of the other folds.
    fold = np.repeat(rng.integers(0, OOV_FOLDS, n_r), r_lens)
    key = ids[:t_r] * OOV_FOLDS + fold
    per_fold = np.bincount(key, minlength=u * OOV_FOLDS)
    held_out_oov = float(np.mean(per_fold[key] == ref_counts[ids[:t_r]]))

    seen = int(np.count_nonzero(ref_counts))
    stats: dict[str, Any] = {
        "token_js": float(obs_js[0]),
        "token_js_p_value": p_js,
        "oov_rate": float(obs_oov[0]),
        "reference_oov_rate": held_out_oov,
        "oov_p_value": p_oov,
        "top_k": min(k, seen),
        "vocabulary_reference": seen,
        "vocabulary_current": int(np.count_nonzero(cur_counts)),
        "tokens_reference": t_r,
        "tokens_current": t_c,
        "permutations": r,
    }
    common = {
        "kind": "numeric",
        "threshold": P_VALUE_THRESHOLD,
        "drifted": False,
        "reference_count": t_r,
        "current_count": t_c,
        "reference_missing": 0,
        "current_missing": 0,
    }
    parts = [
        ColumnDrift(
            name=f"{name}.tokens",
            test="token_js",
            statistic=p_js,
            stats={"jensenshannon": float(obs_js[0]), "top_k": min(k, seen)},
            **common,  # type: ignore[arg-type]
        ),
        ColumnDrift(
            name=f"{name}.oov",
            test="oov",
            statistic=p_oov,
            stats={"oov_rate": float(obs_oov[0]), "reference_oov_rate": held_out_oov},
            **common,  # type: ignore[arg-type]
        ),
    ]
    # plot: the reference's most frequent tokens, then everything else, then tokens it never had
    top = np.argsort(-ref_counts, kind="stable")[:15]
    ref_share, cur_share = ref_counts / t_r, cur_counts / t_c
    unseen = float(cur_share[ref_counts == 0].sum())
    plot = {
        "type": "bars",
        "labels": [_label(vocab[i]) for i in top.tolist()] + ["(other)", "(unseen)"],
        "reference": [*ref_share[top].tolist(), max(0.0, 1 - float(ref_share[top].sum())), 0.0],
        "current": [*cur_share[top].tolist(), max(0.0, 1 - float(cur_share[top].sum()) - unseen), unseen],
    }
    return parts, stats, plot


def _token_stats(ref: FloatArray, cur: FloatArray, k: int) -> tuple[FloatArray, FloatArray]:
    """Jensen-Shannon distance over the reference's top-k tokens plus one 'other' bucket, and the OOV rate,
    for each column of two (vocabulary x permutations) count matrices."""
    n_r = ref.sum(axis=0)
    n_c = cur.sum(axis=0)
    if ref.shape[0] > k:
        top = np.argpartition(-ref, k - 1, axis=0)[:k]
        ref_top = np.take_along_axis(ref, top, axis=0)
        cur_top = np.take_along_axis(cur, top, axis=0)
    else:
        ref_top, cur_top = ref, cur
    cur_top = np.where(ref_top > 0, cur_top, 0.0)  # tokens the reference never had are 'other'
    p = np.vstack((ref_top, n_r - ref_top.sum(axis=0)))
    q = np.vstack((cur_top, n_c - cur_top.sum(axis=0)))
    js = _js_columns(np.maximum(p, 0.0), np.maximum(q, 0.0))
    oov: FloatArray = np.where(ref == 0, cur, 0.0).sum(axis=0) / n_c
    return js, oov


# ================================================================================================ output


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.2e}"
    return f"{x:.4f}".rstrip("0").rstrip(".")


def _details(col: ColumnDrift) -> str:
    s = col.stats
    if col.test == "missing":
        side = "current" if col.judged else "reference"
        if not (col.reference_infinite or col.current_infinite):
            return f"no value in the {side} sample"
        # Values there, all +-inf: "no value" beside a missing share below 100% read as a contradiction.
        return (
            f"no finite value in the {side} sample, "
            f"inf {col.reference_infinite_share:.1%} -> {col.current_infinite_share:.1%}"
        )
    if col.kind == "numeric":
        return (
            f"psi {_fmt(s['psi'])}, ks {_fmt(s['ks_statistic'])} (p {_fmt(s['ks_p_value'])}), "
            f"wasserstein/std {_fmt(s['wasserstein_normed'])}"
            + (
                f", inf {col.reference_infinite_share:.1%} -> {col.current_infinite_share:.1%}"
                if col.reference_infinite or col.current_infinite
                else ""
            )
        )
    if col.kind == "categorical":
        new = f", {s['new_categories']} new ({s['new_category_share']:.1%})" if s["new_categories"] else ""
        return (
            f"chi2 p {_fmt(s['chisquare_p_value'])}, js {_fmt(s['jensenshannon'])}, psi {_fmt(s['psi'])}{new}"
        )
    text = ", ".join(f"{p.name.rsplit('.', 1)[-1]} p {_fmt(p.statistic)}" for p in col.parts)
    if "oov_rate" in s:
        text += f"; oov {s['oov_rate']:.1%} (ref held-out {s['reference_oov_rate']:.1%})"
    return text


def _row(col: ColumnDrift) -> tuple[str, ...]:
    missing = f"{col.reference_missing_share:.1%} -> {col.current_missing_share:.1%}"
    return (
        col.name,
        col.kind,
        col.test_name,
        _fmt(col.statistic),
        _fmt(col.threshold),
        "DRIFT" if col.drifted else ("ok" if col.judged else "not judged"),
        missing,
        _details(col),
    )
