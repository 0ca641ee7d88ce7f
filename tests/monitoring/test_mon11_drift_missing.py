"""A column with no value on one side: the whole drift report raised (as Evidently 0.7.23 does), hiding every
other column's verdict. A column that went entirely missing in the current sample is drift; one with no
value in the reference has nothing to compare with and is not judged; the other columns are unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from modelyard.monitoring import detect_drift, text_drift
from modelyard.training import make_examples


def samples() -> tuple[dict[str, object], dict[str, object]]:
    rng = np.random.default_rng(11)
    ref = {
        "same": rng.normal(size=400),
        "shifted": rng.normal(size=400),
        "num_gone": rng.normal(size=400),
        "cat_gone": ["abc"[i % 3] for i in range(400)],
        "text_gone": [r["source"] for r in make_examples(400, seed=3)],
    }
    cur = {
        "same": rng.normal(size=300),
        "shifted": rng.normal(3, 1, size=300),
        "num_gone": np.full(300, np.nan),  # NaN is missing too
        "cat_gone": pa.nulls(300, pa.string()),
        "text_gone": [None] * 300,
    }
    return ref, cur


def test_a_column_entirely_missing_now_is_drift_and_the_others_keep_their_verdicts() -> None:
    ref, cur = samples()
    report = detect_drift(ref, cur, kinds={"text_gone": "text"}, permutations=100)
    alone = detect_drift({k: ref[k] for k in ("same", "shifted")}, {k: cur[k] for k in ("same", "shifted")})
    for name in ("same", "shifted"):  # computed as before
        assert report.column(name).to_dict() | {"seconds": 0} == alone.column(name).to_dict() | {"seconds": 0}
    assert report.drifted_columns == ("shifted", "num_gone", "cat_gone", "text_gone")
    assert report.share_drifted == pytest.approx(4 / 5) and report.dataset_drifted
    for name, kind in (("num_gone", "numeric"), ("cat_gone", "categorical"), ("text_gone", "text")):
        col = report.column(name)
        assert col.kind == kind and col.drifted and col.judged
        assert (col.reference_count, col.reference_missing) == (400, 0)
        assert (col.current_count, col.current_missing, col.current_missing_share) == (0, 300, 1.0)
        assert col.statistic == 1.0 and col.statistic_kind == "distance"  # the share of missing values
        assert "all 300 values are missing in the current sample (none in the reference)" in col.notes[0]
    rows = {row[0]: row for row in report.rows()}
    assert rows["num_gone"][5] == "DRIFT" and rows["num_gone"][6] == "0.0% -> 100.0%"
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["columns"][2]["drifted"] and data["columns"][2]["judged"]


def test_a_reference_share_of_missing_values_is_said() -> None:
    col = detect_drift({"x": [1.0, None, 2.0, 3.0]}, {"x": [None, None]}).column("x")
    assert (
        col.drifted
        and "all 2 values are missing in the current sample (25.0% in the reference)" in col.notes[0]
    )


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ([None] * 50, None),  # Arrow's null type: no kind to infer from the reference
        (np.full(50, np.nan), None),
        (pa.nulls(50, pa.string()), "categorical"),
        ([None] * 50, "text"),
    ],
)
def test_a_column_with_no_reference_value_is_not_judged_nor_counted(ref: object, kind: str | None) -> None:
    rng = np.random.default_rng(12)
    current = (
        ["a b c", "d e"] * 25
        if kind == "text"
        else ["a", "b"] * 25
        if kind == "categorical"
        else rng.normal(size=50)
    )
    report = detect_drift(
        {"empty": ref, "shifted": rng.normal(size=50)},
        {"empty": current, "shifted": rng.normal(4, 1, size=50)},
        kinds={"empty": kind} if kind else None,  # type: ignore[dict-item]
    )
    col = report.column("empty")
    assert not col.drifted and not col.judged and col.reference_count == 0 and col.current_count == 50
    assert (
        "all 50 values are missing in the reference sample" in col.notes[0] and "not judged" in col.notes[0]
    )
    # left out of the share: one column judged, and drifted (it diluted the share to 0.5)
    assert report.drifted_columns == ("shifted",) and report.share_drifted == 1.0
    assert report.rows()[0][5] == "not judged"
    assert report.to_dict()["columns"][0]["statistic"] is None  # no score: NaN, null in JSON


def test_missing_on_both_sides_is_not_judged() -> None:
    col = detect_drift({"x": [None, None]}, {"x": [None]}).column("x")
    assert not col.drifted and not col.judged and "missing in the reference" in col.notes[0]
    assert not text_drift([None, None], ["a b"]).judged


def test_the_html_report_says_which_column_is_missing(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    ref, cur = samples()
    report = detect_drift(
        {"num_gone": ref["num_gone"], "ref_empty": [None] * 400},
        {"num_gone": cur["num_gone"], "ref_empty": list(np.arange(300.0))},
    )
    html = report.to_html(tmp_path / "r.html").read_text()
    assert "all 300 values are missing in the current sample" in html
    assert "<td>not judged</td>" in html and "ref_empty (numeric): not judged</h2>" in html


def test_a_numeric_column_with_no_finite_value_on_one_side_is_judged_like_a_missing_one() -> None:
    # Only NaN and +-inf (an overflow upstream): this raised "no finite value" for the whole report.
    rng = np.random.default_rng(5)
    ref = {"x": rng.normal(size=200), "y": rng.normal(size=200), "z": np.full(200, np.inf)}
    cur = {"x": np.array([np.nan, np.inf, -np.inf, np.inf]), "y": rng.normal(size=4), "z": rng.normal(size=4)}
    report = detect_drift(ref, cur)
    x, z = report.column("x"), report.column("z")
    assert x.drifted and x.judged and x.test == "missing" and x.statistic == 1.0
    assert (x.current_count, x.current_missing, x.current_infinite) == (0, 1, 3)
    assert "none of the 4 values is finite (1 missing, 3 infinite) in the current sample" in x.notes[0]
    assert not z.drifted and not z.judged and "none of the 200 values is finite" in z.notes[0]
    assert "in the reference sample" in z.notes[0] and math.isnan(z.statistic)
    assert report.column("y").test != "missing" and report.drifted_columns == ("x",)
