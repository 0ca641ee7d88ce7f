"""Metrics silenced prometheus_client's "Removal of labels has not been implemented" warning with a
process-wide filter installed by every Metrics (put back in front of the filters each time, over ones set
since), which also hid that message from any other code in the process. It now installs no filter: a
version no longer served is dropped without the call that warns."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from modelyard.serving._metrics import Metrics

MESSAGE = "Removal of labels has not been implemented in  multi-process mode yet."


def test_metrics_install_no_warning_filter_and_others_still_see_that_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # as for a worker of `yard serve`
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        for _ in range(3):
            metrics = Metrics(multiprocess=True)
            metrics.queue.labels("support-t5", "1").set(3)
            metrics.set_queue([])  # version 1 is served no more: dropped, silently
            assert ("support-t5", "1") not in metrics.queue._metrics
        assert warnings.filters == before
        warnings.warn(MESSAGE, UserWarning, stacklevel=1)  # someone else's, same text
    assert [str(w.message) for w in caught] == [MESSAGE]
