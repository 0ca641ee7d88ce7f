"""The prediction log: what a database refuses never costs the rest of a batch (helper-29)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard.core import Platform
from modelyard.core._models import Prediction
from modelyard.errors import UsageError
from modelyard.serving._predlog import PredictionLog, new_request_id, prediction_id, record_feedback


def test_a_nul_is_stored_as_a_replacement_and_a_refused_row_loses_only_itself(any_platform: Platform) -> None:
    p = any_platform
    log = PredictionLog(p, p.context(), flush_s=3600)
    good, nul, odd = new_request_id(), new_request_id(), new_request_id()
    log.add(good, "m", 1, "stable", ["hello"], ["world"], 1.0)
    log.add(nul, "m", 1, "stable", ["a\x00b"], ["c\x00"], 1.0)  # PostgreSQL refuses NUL in text
    log.add(odd, "m", 1, "x" * 40, ["x"], ["y"], 1.0)  # longer than the column: PostgreSQL refuses it
    log.flush()
    with p.db.read() as s:
        stored = {r.id[:26]: (r.input, r.output) for r in s.scalars(select(Prediction))}
    assert stored[good] == ("hello", "world") and stored[nul] == ("a\ufffdb", "c\ufffd")
    assert log.written + log.dropped == 3 and (odd in stored) == (p.db.dialect == "sqlite")
    log.close()
    with pytest.raises(UsageError, match="without NUL"):
        record_feedback(p, p.context(), "m", good, "t\x00")


def test_feedback_keeps_one_row_per_prediction_with_the_latest_answer(any_platform: Platform) -> None:
    """A client correcting (or retrying) its feedback replaces it: quality reads only the latest, and each
    post added a row, so the table grew without bound."""
    from modelyard.core._models import Feedback

    p = any_platform
    log = PredictionLog(p, p.context(), flush_s=3600)
    rid = new_request_id()
    log.add(rid, "m", 1, "stable", ["a", "b"], ["x", "y"], 1.0)
    log.flush()
    log.close()
    for target in ("first", "second", "third"):
        record_feedback(p, p.context(), "m", rid, target)
    record_feedback(p, p.context(), "m", rid, "other input", index=1)
    with p.db.read() as s:
        rows = [(r.prediction_id, r.target) for r in s.scalars(select(Feedback))]
    assert sorted(rows) == sorted([(prediction_id(rid, 0), "third"), (prediction_id(rid, 1), "other input")])


def test_a_flush_returns_only_once_a_flush_already_under_way_has_stored_its_rows(tmp_path: Path) -> None:
    """Feedback flushes the log, then looks its prediction up. A flush that found the buffer just taken by
    the background flush returned at once, before those rows were stored: feedback sent right after its
    prediction was a 404 now and then."""
    import threading

    from modelyard.testing import make_platform

    p = make_platform(tmp_path / "home")
    log = PredictionLog(p, p.context(), flush_s=3600)
    rid = new_request_id()
    log.add(rid, "m", 1, "stable", ["a"], ["x"], 1.0)
    seen: list[bool] = []

    def feedback_side() -> None:
        log.flush()
        with p.db.read() as s:
            seen.append(s.get(Prediction, prediction_id(rid, 0)) is not None)

    with p.db.write():  # the background flush takes the rows, then waits for the store
        background = threading.Thread(target=log.flush)
        background.start()
        deadline = time.monotonic() + 5
        while log._rows and time.monotonic() < deadline:
            time.sleep(0.01)
        feedback = threading.Thread(target=feedback_side)
        feedback.start()
        feedback.join(0.3)
    background.join(10)
    feedback.join(10)
    log.close()
    p.close()
    assert seen == [True]


def test_feedback_for_an_unknown_prediction_does_not_wait_for_the_write_lock(tmp_path: Path) -> None:
    """An unknown request id (a typo, a replay, a flood; the server retries it while its log flushes) was
    looked up inside a write transaction: each try queued on SQLite's one write lock with the flushes."""
    import threading

    from modelyard.errors import NotFoundError
    from modelyard.testing import make_platform

    p = make_platform(tmp_path / "home")
    outcome: list[BaseException] = []

    def post() -> None:
        try:
            record_feedback(p, p.context(), "m", new_request_id(), "t")
        except BaseException as exc:
            outcome.append(exc)

    try:
        with p.db.write():  # the prediction log (or anyone) writing meanwhile
            poster = threading.Thread(target=post)
            poster.start()
            poster.join(10)  # answered while the lock is held, not after it
            assert not poster.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], NotFoundError)
    finally:
        poster.join()
        p.close()
