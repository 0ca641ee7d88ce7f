"""Rule state is claimed with a compare-and-set: of two monitors evaluating one model at once, one fires."""

from __future__ import annotations

import json
import threading

from modelyard.core import Platform
from modelyard.monitoring._alerts import _claim, _key


def test_only_the_first_of_two_claims_on_the_same_state_wins(any_platform: Platform) -> None:
    key = _key("rule", "m", "drifted")
    first = {"fired_at": "2026-12-06T00:00:00+00:00", "failed": ["log"]}
    written = _claim(any_platform, key, None, first)
    assert written == any_platform.meta(key)
    assert not _claim(any_platform, key, None, {"fired_at": "later", "failed": []})  # read before the first
    assert json.loads(any_platform.meta(key) or "") == first
    seen = any_platform.meta(key)
    assert _claim(any_platform, key, seen, {"fired_at": first["fired_at"], "failed": []})
    assert not _claim(any_platform, key, seen, {"fired_at": "x", "failed": ["log"]})  # stale again


def test_concurrent_claims_of_a_new_rule_state_let_exactly_one_fire(any_platform: Platform) -> None:
    key = _key("rule", "m", "concurrent")
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
