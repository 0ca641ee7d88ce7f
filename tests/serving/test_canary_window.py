"""One canary SLO window for every worker and replica of a model, pooled through the metadata store."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from _served import Served  # tests/serving/_served.py
from sqlalchemy import func, select

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.core._models import AuditRecord, CanaryOutcome
from modelyard.core._platform import utcnow
from modelyard.serving._config import Canary
from modelyard.serving._deploy import SHARED_LATENCIES, share_outcomes
from modelyard.serving._routing import SloWindow
from modelyard.testing import make_platform

SLO = Canary(max_error_rate=0.2, max_p95_ms=100.0, window_s=30.0, min_requests=10)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Platform]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    p = make_platform(tmp_path / "home", database_url=url)
    yield p
    p.close()


def exchange(p: Platform, window: SloWindow, server: str, model: str = "srv") -> None:
    """What a server's share loop does once (App._share), without the loop."""
    others = share_outcomes(
        p, p.context(), model, window.generation, server, window.take_unshared(), window_s=SLO.window_s
    )
    window.set_others(others)


def test_servers_below_min_requests_each_breach_together(store: Platform) -> None:
    a, b = SloWindow(SLO, generation=3), SloWindow(SLO, generation=3)
    for _ in range(6):
        a.add(False, 5.0)
        b.add(False, 5.0)
    assert a.breach() is None and b.breach() is None  # 6 each: below min_requests alone

    exchange(store, a, "host:1:aa")  # shares its 6, sees nobody yet
    assert a.breach() is None
    exchange(store, b, "host:2:bb")  # shares its 6, sees a's
    assert b.breach() == "error rate 100.0% over 12 requests > 20.0%"
    exchange(store, a, "host:1:aa")  # nothing new of its own; now sees b's
    assert a.breach() == "error rate 100.0% over 12 requests > 20.0%"  # its own 6 are not counted twice

    # another generation of the deployment, or another model, starts from nothing
    c = SloWindow(SLO, generation=4)
    exchange(store, c, "host:3:cc")
    assert c.breach() is None and c._current() == (0, 0, [])
    d = SloWindow(SLO, generation=3)
    exchange(store, d, "host:3:cc", model="other")
    assert d._current() == (0, 0, [])


def test_latencies_are_pooled_for_the_p95(store: Platform) -> None:
    fast, slow = SloWindow(SLO, generation=1), SloWindow(SLO, generation=1)
    for _ in range(10):
        fast.add(True, 50.0)
        slow.add(True, 500.0)
    assert fast.breach() is None  # 10 requests, p95 50 ms: within the SLO here
    exchange(store, slow, "b")
    exchange(store, fast, "a")
    assert fast.breach() == "p95 latency 500 ms over 20 requests > 100 ms"


def test_rows_outside_the_window_are_ignored_and_old_ones_deleted(store: Platform) -> None:
    ctx = store.context()
    now = utcnow()
    with store.db.write() as s:
        for age, server in ((SLO.window_s * 1.5, "recent-but-out"), (SLO.window_s * 3, "stale")):
            s.add(
                CanaryOutcome(
                    project_id=ctx.project_id,
                    model="srv",
                    generation=1,
                    server=server,
                    ts=now - timedelta(seconds=age),
                    requests=50,
                    errors=50,
                    latencies="[]",
                )
            )
    w = SloWindow(SLO, generation=1)
    exchange(store, w, "a")  # nothing of its own to add: reads only
    assert w._current() == (0, 0, [])
    with store.db.read() as s:
        assert s.scalar(select(func.count()).select_from(CanaryOutcome)) == 2
    w.add(True, 1.0)
    exchange(store, w, "a")  # adding a row deletes those older than two windows
    with store.db.read() as s:
        servers = set(s.scalars(select(CanaryOutcome.server)))
    assert servers == {"recent-but-out", "a"}


def test_a_busy_server_shares_exact_counts_and_a_latency_sample(store: Platform) -> None:
    w = SloWindow(SLO, generation=1)
    for i in range(3 * SHARED_LATENCIES):
        w.add(i % 10 != 0, 20.0)
    exchange(store, w, "busy")
    with store.db.read() as s:
        row = s.execute(select(CanaryOutcome)).scalar_one()
        assert (row.requests, row.errors) == (3 * SHARED_LATENCIES, 3 * SHARED_LATENCIES // 10)
        assert len(json.loads(row.latencies)) == SHARED_LATENCIES
    reader = SloWindow(SLO, generation=1)
    exchange(store, reader, "reader")
    n, errors, latencies = reader._current()
    assert (n, errors, len(latencies)) == (3 * SHARED_LATENCIES, 3 * SHARED_LATENCIES // 10, SHARED_LATENCIES)
    assert reader.breach() is None  # 10% errors, p95 20 ms


def test_outcomes_that_could_not_be_shared_are_offered_again() -> None:
    w = SloWindow(SLO, generation=1)
    w.add(False, 1.0)
    w.add(True, 2.0)
    mine = w.take_unshared()
    assert (mine.requests, mine.errors, mine.latencies) == (2, 1, [2.0])
    w.untake(mine)  # the store was unreachable
    w.add(True, 3.0)
    again = w.take_unshared()
    assert (again.requests, again.errors, again.latencies) == (3, 1, [2.0, 3.0])
    assert w.take_unshared().requests == 0


@pytest.mark.slow
def test_two_servers_roll_a_canary_back_on_their_pooled_requests(served: Served) -> None:
    """Two apps (as two workers or replicas would be) each see 5 failures of a broken canary, below its
    min_requests of 8: neither could tell alone; pooled, the first to look rolls it back, once."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from modelyard.serving import create_app, deploy, parse_config
    from modelyard.serving._deploy import current

    config = parse_config(
        {
            "models": ["srv@live"],
            "auth": False,
            "canary": {
                "max_error_rate": 0.2,
                "max_p95_ms": 60_000,
                "window_s": 60,
                "min_requests": 8,
                "share_s": 0.2,
            },
        }
    )
    p1, p2 = (Platform(load_settings(home=served.home)) for _ in range(2))
    try:
        admin = p1.context()
        with p1.db.read() as s:
            audited_before = s.scalar(
                select(func.count()).select_from(AuditRecord).where(AuditRecord.resource == "deployment:srv")
            )
        deploy(p1, admin, "srv", version=3, mode="canary", weight=100, reason="pooled window test")
        with TestClient(create_app(config, p1)) as c1, TestClient(create_app(config, p2)) as c2:
            for client in (c1, c2):
                assert client.get("/v1/models").json()["models"][0]["candidate"]["version"] == 3
                for i in range(5):
                    r = client.post(
                        "/v1/models/srv:predict", json={"inputs": [f"normalise date (de-DE): 0{i}.03.2013"]}
                    )
                    assert r.status_code == 200 and r.json()["version"] == 1  # the stable version answered
            deadline = time.monotonic() + 30
            while any("candidate" in c.get("/v1/models").json()["models"][0] for c in (c1, c2)):
                assert time.monotonic() < deadline, "the pooled window never rolled the canary back"
                time.sleep(0.1)
            rollbacks = sum(_rollbacks(c) for c in (c1, c2))
        dep = current(p1, admin, "srv")
        assert dep is not None and dep.mode == "off"
        pooled = re.fullmatch(
            r"automatic rollback: error rate 100\.0% over (\d+) requests > 20\.0%",
            dep.reason,
        )
        assert pooled is not None, dep.reason
        assert 8 <= int(pooled[1]) <= 10  # more than either server's own 5
        with p1.db.read() as s:
            audited = s.scalars(
                select(AuditRecord).where(AuditRecord.resource == "deployment:srv").order_by(AuditRecord.seq)
            ).all()
        automatic = [r for r in audited[audited_before:] if "automatic" in str(r.detail)]
        assert len(automatic) == 1  # the second server found it done and recorded nothing
        assert rollbacks == 1
    finally:
        deploy(p1, p1.context(), "srv", version=None, mode="off", reason="test cleanup")
        p1.close()
        p2.close()


def _rollbacks(client: Any) -> float:
    text = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("yard_canary_rollbacks_total{")
    )


def test_a_malformed_shared_row_fails_the_share_not_the_window(store: Platform) -> None:
    ctx = store.context()
    with store.db.write() as s:
        for bad in ('["fast"]', "{not json", '{"a": 1}'):
            s.add(
                CanaryOutcome(
                    project_id=ctx.project_id,
                    model="srv",
                    generation=1,
                    server=f"hostile-{bad[:3]}",
                    ts=utcnow(),
                    requests=1,
                    errors=0,
                    latencies=bad,
                )
            )
    w = SloWindow(SLO, generation=1)
    for _ in range(SLO.min_requests):
        w.add(False, 1.0)
    with pytest.raises(ValueError):  # the serving loop logs it and offers its outcomes again
        exchange(store, w, "a")
    assert w.breach() == "error rate 100.0% over 10 requests > 20.0%"  # its own requests still count
