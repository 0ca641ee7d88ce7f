"""A numeric column whose only values on one side are +-inf is judged like a missing one (test
``missing``); its table row still says the values are infinite, as every other numeric row does (``inf a% ->
b%``), rather than "no value" beside a missing share of a third."""

from __future__ import annotations

import math

import pytest

from modelyard.monitoring import detect_drift

pytest.importorskip("scipy")


def test_a_current_side_of_only_infinities_reads_as_infinite_in_the_row() -> None:
    report = detect_drift({"x": [1.0, 2.0, 3.0]}, {"x": [math.inf, -math.inf, math.nan]})
    col = report.column("x")
    assert col.test == "missing" and col.drifted
    details = report.rows()[0][-1]
    assert "no value" not in details, details
    assert "no finite value in the current sample" in details
    assert "inf 0.0% -> 66.7%" in details


def test_a_reference_of_only_infinities_reads_as_infinite_in_the_row() -> None:
    report = detect_drift({"x": [math.inf, math.inf]}, {"x": [1.0, 2.0]})
    col = report.column("x")
    assert not col.judged
    details = report.rows()[0][-1]
    assert "no finite value in the reference sample" in details and "inf 100.0% -> 0.0%" in details


def test_an_entirely_missing_column_still_reads_as_no_value() -> None:
    report = detect_drift({"x": [1.0, 2.0]}, {"x": [math.nan, math.nan]})
    assert report.rows()[0][-1] == "no value in the current sample"
