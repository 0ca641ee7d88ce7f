"""`yard serve --workers N` starts without a prometheus_client UserWarning on every worker's stderr: the
labels a worker stops serving are zeroed in the shared files on purpose (docs/serving.md, Metrics)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from modelyard.serving._metrics import Metrics


def test_dropping_a_version_no_longer_served_warns_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What `yard serve --workers 2` sets for its workers; prometheus_client warns on any remove() then.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = Metrics(multiprocess=True)
        metrics.queue.labels("support-t5", "1").set(3)
        metrics.info.labels("support-t5", "1", "fp32", "stable").set(1)
        metrics.set_queue([])  # version 1 is served no more
        assert ("support-t5", "1") not in metrics.queue._metrics
        warnings.warn("others still show", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["others still show"]
