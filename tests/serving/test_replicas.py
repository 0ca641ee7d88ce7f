"""Two servers of one model side by side in this process, as replicas behind one Service would be."""

from __future__ import annotations

import time

import pytest
from _served import Served  # tests/serving/_served.py

from modelyard.config import load_settings
from modelyard.core import Platform

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("replicated", [True, False])
def test_feedback_waits_for_a_prediction_another_replica_answered(served: Served, replicated: bool) -> None:
    """Replica A answers and keeps the prediction in its buffer for up to flush_s; the feedback reaches
    replica B. Marked replicated (as `yard serve --export k8s` marks its pods), B waits for A to store it;
    a lone server answers 404 at once, as it should for an id nobody logged."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from modelyard.serving import create_app, parse_config

    config = parse_config(
        {"models": ["srv@live"], "auth": False, "logging": {"flush_s": 3.0}, "replicated": replicated}
    )
    a, b = (Platform(load_settings(home=served.home)) for _ in range(2))
    try:
        with (
            TestClient(create_app(config, a), base_url="http://localhost") as replica_a,
            TestClient(create_app(config, b), base_url="http://localhost") as replica_b,
        ):
            r = replica_a.post(
                "/v1/models/srv:predict", json={"inputs": ["normalise date (de-DE): 02.03.2013"]}
            )
            assert r.status_code == 200
            started = time.monotonic()
            fb = replica_b.post(
                "/v1/models/srv:feedback", json={"request_id": r.json()["request_id"], "target": "2013-03-02"}
            )
            waited = time.monotonic() - started
        if replicated:
            assert fb.status_code == 200 and fb.json() == {"recorded": True}, fb.text
            assert waited < 3.0 + 2.0 + 2.0  # flush_s + FEEDBACK_GRACE_S + slack
        else:
            assert fb.status_code == 404 and fb.json()["error"]["code"] == "not_found"
            assert waited < 2.0
    finally:
        a.close()
        b.close()
