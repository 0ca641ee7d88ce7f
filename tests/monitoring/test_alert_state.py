"""Rule state is claimed with a compare-and-set: of two monitors evaluating one model at once, one fires."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from modelyard.core import Platform
from modelyard.monitoring._alerts import _claim, _key


def test_only_the_first_of_two_claims_on_the_same_state_wins(any_platform: Platform) -> None:
    key = _key("rule", 1, "m", "drifted")
    first = {"fired_at": "2026-12-06T00:00:00+00:00", "failed": ["log"]}
    written = _claim(any_platform, key, None, first)
    assert written == any_platform.meta(key)
    assert not _claim(any_platform, key, None, {"fired_at": "later", "failed": []})  # read before the first
    assert json.loads(any_platform.meta(key) or "") == first
    seen = any_platform.meta(key)
    assert _claim(any_platform, key, seen, {"fired_at": first["fired_at"], "failed": []})
    assert not _claim(any_platform, key, seen, {"fired_at": "x", "failed": ["log"]})  # stale again


def test_concurrent_claims_of_a_new_rule_state_let_exactly_one_fire(any_platform: Platform) -> None:
    key = _key("rule", 1, "m", "concurrent")
    start = threading.Barrier(8)
    won: list[bool] = []

    def claim(i: int) -> None:
        start.wait()
        won.append(_claim(any_platform, key, None, {"fired_at": str(i), "failed": []}) is not None)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]


def test_a_retrain_another_monitor_is_submitting_is_not_submitted_again(
    any_platform: Platform, tmp_path: Path
) -> None:
    """Two monitors whose rules both retrain one model read 'nothing pending' and both submitted a job: a
    retrain is claimed before it is submitted, and a claim older than the lease (its monitor died) is taken
    over."""
    import copy
    from datetime import timedelta

    import pytest
    import yaml

    from modelyard.core._platform import utcnow
    from modelyard.errors import NotFoundError
    from modelyard.monitoring._alerts import CLAIM_LEASE, _start_retrain, load_alerts
    from modelyard.testing._fixtures import TINY_RECIPE

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(copy.deepcopy(TINY_RECIPE)))
    (tmp_path / "gates.yaml").write_text(
        yaml.safe_dump({"data": {"dataset": "norm@1"}, "size": {"max_mb": 9}})
    )
    rules = {
        "model": "m@1",
        "rules": [{"name": "r", "when": "requests > 0", "actions": ["retrain"]}],
        "retrain": {"recipe": "recipe.yaml", "policy": "gates.yaml"},
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    policy, ctx = load_alerts(tmp_path / "rules.yaml"), any_platform.context()
    key = _key("retrain", ctx.project_id, "m")
    submitting = {"state": "submitting", "claim": "other", "at": utcnow().isoformat()}
    seen = _claim(any_platform, key, None, submitting)
    assert "another monitor is submitting it" in _start_retrain(any_platform, ctx, policy, "m")
    assert any_platform.meta(key) == seen  # untouched
    stale = {**submitting, "at": (utcnow() - CLAIM_LEASE - timedelta(seconds=1)).isoformat()}
    _claim(any_platform, key, seen, stale)
    with pytest.raises(
        NotFoundError, match="norm"
    ):  # taken over: on to the newest data, which this home lacks
        _start_retrain(any_platform, ctx, policy, "m")
