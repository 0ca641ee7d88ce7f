"""One canary SLO window for every worker and replica of a model, pooled through the metadata store."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _served import Served  # tests/serving/_served.py
from sqlalchemy import func, select

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.core._models import AuditRecord, CanaryOutcome
from modelyard.core._platform import utcnow
from modelyard.errors import BackendError
from modelyard.serving import _deploy
from modelyard.serving._config import Canary
from modelyard.serving._deploy import SHARED_LATENCIES, deploy, share_window
from modelyard.serving._routing import SloWindow

SLO = Canary(max_error_rate=0.2, max_p95_ms=100.0, window_s=30.0, min_requests=10)


@pytest.fixture
def store(any_platform: Platform) -> Platform:
    return any_platform


def exchange(p: Platform, window: SloWindow, server: str, model: str = "srv") -> None:
    """One turn of a server's share loop for one model (what Server._share does before judging)."""
    asyncio.run(share_window(p, p.context(), model, window, server))


def rows(p: Platform) -> list[tuple[str, int, int]]:
    with p.db.read() as s:
        return [
            (r.server, r.requests, r.errors)
            for r in s.scalars(select(CanaryOutcome).order_by(CanaryOutcome.id))
        ]


def plant(p: Platform, *, server: str, requests: int, errors: int, latencies: str, **extra: Any) -> None:
    """A row as another (possibly broken or hostile) process could write it."""
    values: dict[str, Any] = {"generation": 1, "ts": utcnow(), **extra}
    with p.db.write() as s:
        s.add(
            CanaryOutcome(
                project_id=p.context().project_id,
                model="srv",
                server=server,
                requests=requests,
                errors=errors,
                latencies=latencies,
                **values,
            )
        )


def outage(*args: Any, **kwargs: Any) -> Any:
    """A store call that fails as an unreachable store does (injected between a server's two calls)."""
    raise BackendError("cannot reach the metadata store (injected)")


def test_servers_below_min_requests_each_breach_together(store: Platform) -> None:
    a, b = SloWindow(SLO, key=3), SloWindow(SLO, key=3)
    for _ in range(6):
        a.add(False, 5.0)
        b.add(False, 5.0)
    assert a.breach() is None and b.breach() is None  # 6 each: below min_requests alone

    exchange(store, a, "host:1:aa")  # stores its 6, sees nobody yet
    assert a.breach() is None
    exchange(store, b, "host:2:bb")  # stores its 6, sees a's
    assert b.breach(latency=False) == "error rate 100.0% over 12 requests > 20.0%"
    exchange(store, a, "host:1:aa")  # nothing new of its own; now sees b's
    assert a.breach() == "error rate 100.0% over 12 requests > 20.0%"  # its own 6 are not counted twice
    assert rows(store) == [("host:1:aa", 6, 6), ("host:2:bb", 6, 6)]

    # another candidate's window, or another model, starts from nothing
    for window, model in ((SloWindow(SLO, key=4), "srv"), (SloWindow(SLO, key=3), "other")):
        exchange(store, window, "host:3:cc", model=model)
        window.add(False, 1.0)
        assert window.breach() is None


def test_latencies_are_pooled_and_a_sampled_row_weighs_what_it_stands_for(store: Platform) -> None:
    fast, slow = SloWindow(SLO, key=1), SloWindow(SLO, key=1)
    for _ in range(10):
        fast.add(True, 50.0)
        slow.add(True, 500.0)
    assert fast.breach() is None  # 10 requests, p95 50 ms: within the SLO here
    exchange(store, slow, "b")
    exchange(store, fast, "a")
    assert fast.breach(latency=False) is None  # the request path checks only the error rate
    assert fast.breach() == "p95 latency 500 ms over 20 requests > 100 ms"

    # 3,000 slow successes stored as a sample of SHARED_LATENCIES still outweigh 200 fast ones
    busy, quiet = SloWindow(SLO, key=2), SloWindow(SLO, key=2)
    for _ in range(3 * SHARED_LATENCIES):
        busy.add(True, 300.0)
    for _ in range(200):
        quiet.add(True, 10.0)
    exchange(store, busy, "busy")
    exchange(store, quiet, "quiet")
    assert quiet.breach() == f"p95 latency 300 ms over {3 * SHARED_LATENCIES + 200} requests > 100 ms"


def test_a_busy_server_shares_exact_counts_and_a_latency_sample(store: Platform) -> None:
    w = SloWindow(SLO, key=1)
    for i in range(3 * SHARED_LATENCIES):
        w.add(i % 10 != 0, 20.0)
    exchange(store, w, "busy")
    with store.db.read() as s:
        row = s.execute(select(CanaryOutcome)).scalar_one()
        assert (row.requests, row.errors) == (3 * SHARED_LATENCIES, 3 * SHARED_LATENCIES // 10)
        assert len(json.loads(row.latencies)) == SHARED_LATENCIES
    reader = SloWindow(SLO, key=1)
    exchange(store, reader, "reader")
    reader.add(True, 20.0)
    assert reader.breach() is None  # 10% errors, p95 20 ms
    for _ in range(3 * SHARED_LATENCIES):  # the same again, failing: 55% over the pooled window
        reader.add(False, 20.0)
    assert reader.breach(latency=False) == "error rate 55.0% over 6001 requests > 20.0%"


def test_rows_outside_the_window_are_ignored_and_old_or_future_ones_deleted(store: Platform) -> None:
    now = utcnow()
    plant(
        store, server="recent-but-out", requests=50, errors=50, latencies="[]", ts=now - timedelta(seconds=45)
    )
    plant(store, server="stale", requests=50, errors=50, latencies="[]", ts=now - timedelta(seconds=90))
    plant(store, server="future", requests=50, errors=50, latencies="[]", ts=now + timedelta(hours=1))
    w = SloWindow(SLO, key=1)
    exchange(store, w, "a")  # nothing of its own to store: reads only, and sees none of them
    w.add(True, 1.0)
    assert w.breach() is None
    assert {r[0] for r in rows(store)} == {"recent-but-out", "stale", "future"}
    exchange(store, w, "a")  # storing a row deletes those older than two windows and those from the future
    assert {r[0] for r in rows(store)} == {"recent-but-out", "a"}


def test_malformed_or_hostile_rows_are_skipped_never_trusted(store: Platform) -> None:
    w = SloWindow(SLO, key=1)
    for _ in range(20):
        w.add(False, 1.0)
    assert w.breach() == "error rate 100.0% over 20 requests > 20.0%"
    # would hide the breach (negative errors), fake one, or break the p95, if counted
    plant(store, server="negative", requests=1000, errors=-1000, latencies="[]")
    plant(store, server="more-errors", requests=1, errors=5, latencies="[]")
    plant(store, server="nan", requests=2, errors=0, latencies="[NaN, 1]")
    plant(store, server="negative-ms", requests=1, errors=0, latencies="[-5]")
    plant(store, server="strings", requests=1, errors=0, latencies='["fast"]')
    plant(store, server="not-json", requests=1, errors=0, latencies="{not json")
    plant(store, server="object", requests=1, errors=0, latencies='{"a": 1}')
    plant(store, server="too-many", requests=1, errors=0, latencies="[1, 2]")
    plant(store, server="huge", requests=10**8, errors=0, latencies="[]")
    plant(store, server="long", requests=5000, errors=0, latencies=json.dumps([1.5] * 5000))
    plant(store, server="fine", requests=4, errors=0, latencies="[1, 2, 3, 4]")
    exchange(store, w, "a")
    assert w.warned  # logged once per window
    assert w.breach() == "error rate 83.3% over 24 requests > 20.0%"  # its own 20 failures and "fine" only


def test_a_failed_read_does_not_store_the_outcomes_twice(
    store: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store takes the row, then the read of the others fails (an outage starting between the two):
    the outcomes were stored, so the next turn must not store them again."""
    w = SloWindow(SLO, key=1)
    for _ in range(5):
        w.add(False, 1.0)

    monkeypatch.setattr(_deploy, "other_outcomes", outage)
    exchange(store, w, "a")
    monkeypatch.undo()
    exchange(store, w, "a")
    assert rows(store) == [("a", 5, 5)]


def test_outcomes_that_could_not_be_stored_are_offered_again(
    store: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = SloWindow(SLO, key=1)
    w.add(False, 1.0)
    w.add(True, 2.0)

    monkeypatch.setattr(_deploy, "add_outcomes", outage)
    exchange(store, w, "a")
    monkeypatch.undo()
    w.add(True, 3.0)
    exchange(store, w, "a")
    assert rows(store) == [("a", 3, 1)]
    with store.db.read() as s:
        assert json.loads(s.scalars(select(CanaryOutcome.latencies)).one()) == [2.0, 3.0]


@pytest.mark.slow
def test_a_weight_change_keeps_the_window_and_a_new_candidate_starts_one(
    store: Platform, model_dir: Path
) -> None:
    from modelyard.registry import register

    ctx = store.context()
    for _ in range(2):
        register(store, ctx, model_dir, "srv")
    first = deploy(store, ctx, "srv", version=1, mode="canary", weight=10)
    assert first.candidate_generation == first.generation
    heavier = deploy(store, ctx, "srv", version=1, mode="canary", weight=50)
    assert heavier.generation == first.generation + 1
    assert heavier.candidate_generation == first.generation  # same candidate: same window
    shadow = deploy(store, ctx, "srv", version=1, mode="shadow", weight=0)
    assert shadow.candidate_generation == first.generation
    plant(store, server="x", requests=1, errors=1, latencies="[]", generation=first.generation)
    other = deploy(store, ctx, "srv", version=2, mode="canary", weight=10)
    assert other.candidate_generation == other.generation  # a new candidate: a new window
    assert rows(store) == []  # and the old one's outcomes are gone with it
    off = deploy(store, ctx, "srv", version=None, mode="off")
    assert off.candidate_generation is None
    again = deploy(store, ctx, "srv", version=2, mode="canary", weight=10)
    assert again.candidate_generation == again.generation  # back after "off": a fresh window


@pytest.mark.slow
def test_more_than_half_of_the_traffic_takes_what_promotion_takes(store: Platform, model_dir: Path) -> None:
    # An engineer may try a version on a minority of requests; a majority answered by the candidate would
    # bypass the gates and the four-eyes rule of `yard models promote`.
    from modelyard.core import Role
    from modelyard.errors import GateFailedError, PermissionDeniedError
    from modelyard.registry import attest, register
    from modelyard.testing import actor

    owner = store.context()
    engineer = actor(store, owner, "deployer", Role.ENGINEER)
    approver, author = (
        actor(store, owner, "ops-approver", Role.APPROVER),
        actor(store, owner, "au", Role.ADMIN),
    )
    register(store, owner, model_dir, "srv")
    register(store, author, model_dir, "srv")
    assert deploy(store, engineer, "srv", version=2, mode="canary", weight=50).weight == 50
    assert deploy(store, engineer, "srv", version=2, mode="shadow", weight=100).mode == "shadow"
    with pytest.raises(PermissionDeniedError, match="approver"):
        deploy(store, engineer, "srv", version=2, mode="ab", weight=51)
    with pytest.raises(GateFailedError, match="no passing gate run"):
        deploy(store, approver, "srv", version=2, mode="canary", weight=100)
    attest(store, owner, "srv@2", "gates", {"checks": []}, passed=True)
    with pytest.raises(PermissionDeniedError, match="four eyes"):
        deploy(store, author, "srv", version=2, mode="canary", weight=100)
    assert deploy(store, approver, "srv", version=2, mode="canary", weight=100).weight == 100
    attest(store, owner, "srv@2", "gates", {"checks": []}, passed=False)  # its latest gate run failed
    with pytest.raises(GateFailedError):
        deploy(store, approver, "srv", version=2, mode="ab", weight=90)
    with store.db.read() as s:
        outcomes = s.execute(
            select(AuditRecord.action, AuditRecord.outcome).where(AuditRecord.resource == "deployment:srv")
        ).all()
    assert outcomes.count(("model.approve", "denied")) == 1
    assert outcomes.count(("model.deploy", "denied")) == 1  # four eyes
    assert outcomes.count(("model.deploy", "refused")) == 2  # no passing gates
    assert _deploy.current(store, owner, "srv").weight == 100  # type: ignore[union-attr]


@pytest.mark.slow
def test_two_servers_roll_a_canary_back_on_their_pooled_requests(served: Served) -> None:
    """Two apps (as two workers or replicas would be) each see 5 failures of a broken canary, below its
    min_requests of 8: neither could tell alone; pooled, the first to look rolls it back, once."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from modelyard.serving import create_app, parse_config
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
        deploy(
            p1,
            p1.context(token=served.approver),
            "srv",
            version=3,
            mode="canary",
            weight=100,
            reason="pooled window test",
        )
        with (
            TestClient(create_app(config, p1), base_url="http://localhost") as c1,
            TestClient(create_app(config, p2), base_url="http://localhost") as c2,
        ):
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


@pytest.mark.slow
def test_a_rollback_the_store_cannot_record_fails_no_request_and_is_recorded_later(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses the rollback (an outage): the candidate still leaves this server's traffic, every
    client is answered by the stable version, a weight change made meanwhile does not bring the candidate
    back, and once the store takes writes again the rollback is recorded (and counted) once."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from modelyard.serving import create_app, parse_config
    from modelyard.serving._deploy import current

    config = parse_config(
        {
            "models": ["srv@live"],
            "auth": False,
            "alias_poll_s": 0.2,
            "canary": {"max_error_rate": 0.2, "max_p95_ms": 60_000, "min_requests": 3, "share_s": 0.2},
        }
    )
    p = Platform(load_settings(home=served.home))
    ctx = p.context()
    try:
        deploy(
            p,
            p.context(token=served.approver),
            "srv",
            version=3,
            mode="canary",
            weight=100,
            reason="unrecordable rollback",
        )
        monkeypatch.setattr(_deploy, "rollback_candidate", outage)
        with TestClient(create_app(config, p), base_url="http://localhost") as client:
            for i in range(6):
                r = client.post(
                    "/v1/models/srv:predict", json={"inputs": [f"normalise date (de-DE): 0{i}.03.2013"]}
                )
                assert r.status_code == 200 and r.json()["version"] == 1, r.text
            assert "candidate" not in client.get("/v1/models").json()["models"][0]
            dep = current(p, ctx, "srv")
            assert dep is not None and dep.mode == "canary"  # the store has not heard of it yet
            deploy(p, ctx, "srv", version=3, mode="canary", weight=50, reason="meanwhile")  # same candidate
            time.sleep(1.5)  # several polls
            assert "candidate" not in client.get("/v1/models").json()["models"][0]
            assert _rollbacks(client) == 0

            monkeypatch.undo()  # the store takes writes again
            deadline = time.monotonic() + 20
            while (dep := current(p, ctx, "srv")) is not None and dep.mode != "off":
                assert time.monotonic() < deadline, "the pending rollback was never recorded"
                time.sleep(0.1)
            assert dep is not None and dep.reason.startswith("automatic rollback: error rate")
            assert _rollbacks(client) == 1
            assert "candidate" not in client.get("/v1/models").json()["models"][0]
    finally:
        monkeypatch.undo()
        deploy(p, ctx, "srv", version=None, mode="off", reason="test cleanup")
        p.close()


class _Stub:
    """A model standing in for a loaded version: a faulty one fails on "bad"; "slow" is held until ``gate``
    is set."""

    def __init__(self, *, faulty: bool = False) -> None:
        import threading

        self.gate, self.faulty = threading.Event(), faulty

    def generate(self, texts: list[str], **kwargs: Any) -> list[str]:
        if self.faulty and "bad" in texts:
            time.sleep(0.2)  # while another client's input joins the queue
            raise ValueError("token id out of range")
        if "slow" in texts:
            self.gate.wait(30)
        return [t.upper() for t in texts]


def test_the_request_that_rolls_a_canary_back_is_answered_without_waiting_for_its_queue(
    store: Platform,
) -> None:
    """The request whose outcome breached the SLO waited, answer in hand, for the rolled-back candidate to
    finish every input queued on it (up to a minute) before it was answered."""
    from modelyard.serving._app import Server
    from modelyard.serving._config import parse_config
    from modelyard.serving._routing import Params, Route, Slot

    config = parse_config(
        {"models": ["srv@1"], "batching": {"max_batch_size": 1}, "canary": {"min_requests": 1}}
    )
    cand_model = _Stub(faulty=True)

    async def run() -> tuple[float, list[str]]:
        server = Server(config, store)
        stable = Slot("srv", 1, "fp32", _Stub(), config)
        cand = Slot("srv", 2, "fp32", cand_model, config)
        route = Route("srv", None, stable)
        route.candidate, route.mode, route.weight = cand, "canary", 100
        route.window = SloWindow(config.canary, 1)
        for slot in (stable, cand):
            slot.batcher.start()
        t0 = time.monotonic()
        answer = asyncio.create_task(server.predict(route, ["bad"], Params(4), None))
        await asyncio.sleep(0.05)  # "bad" runs on the candidate
        queued = asyncio.create_task(cand.batcher.submit(["slow"], Params(4)))  # another client's input
        _, out, role = await asyncio.wait_for(answer, 20)
        assert role == "stable"
        took = time.monotonic() - t0
        cand_model.gate.set()
        await queued
        assert route.candidate is None  # rolled back
        await stable.close()
        server.predlog.close()
        return took, out

    took, out = asyncio.run(run())
    assert out == ["BAD"]  # the stable version answered
    assert took < 2, took


def test_the_answer_that_rolls_a_canary_back_is_counted_as_the_candidates(store: Platform) -> None:
    """The role of an answer was read after it came back (slot is route.candidate): a candidate's answer
    whose own outcome completed the evidence that rolled it back was logged and counted as the stable
    version's."""
    from modelyard.serving._app import Server
    from modelyard.serving._config import parse_config
    from modelyard.serving._routing import Params, Route, Slot

    config = parse_config({"models": ["srv@1"], "canary": {"min_requests": 2, "max_error_rate": 0.1}})

    async def run() -> tuple[str, list[str], Slot | None]:
        server = Server(config, store)
        stable = Slot("srv", 1, "fp32", _Stub(), config)
        cand = Slot("srv", 2, "fp32", _Stub(), config)
        route = Route("srv", None, stable)
        route.candidate, route.mode, route.weight = cand, "canary", 100
        route.window = SloWindow(config.canary, 1)
        route.window.add(False, 5.0)  # an earlier failure: this answer's success makes min_requests
        for slot in (stable, cand):
            slot.batcher.start()
        slot, out, role = await server.predict(route, ["ok"], Params(4), None)
        assert slot is cand
        await stable.close()
        server.predlog.close()
        return role, out, route.candidate

    role, out, left = asyncio.run(run())
    # The candidate answered, and its answer rolled it back: after the await it is no longer the route's
    # candidate, so reading the role then said "stable".
    assert out == ["OK"] and left is None
    assert role == "candidate"


def test_a_stopping_server_lets_its_background_work_finish(store: Platform) -> None:
    """Shadow copies and late canary charges run in the background and log what the prediction log and the
    window must get: a server stopping dropped them mid-way ("Task was destroyed but it is pending")."""
    from modelyard.serving._app import Server
    from modelyard.serving._config import parse_config

    done: list[str] = []

    async def late() -> None:
        await asyncio.sleep(0.3)
        done.append("logged")

    async def run() -> None:
        server = Server(parse_config({"models": ["srv@1"]}), store)
        server._spawn(late())
        await server.stop()

    asyncio.run(run())
    assert done == ["logged"]


@pytest.mark.slow
def test_a_read_from_before_a_rollback_does_not_put_the_candidate_back(
    store: Platform, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch loop reads the deployment, then applies it: a read that began before this server's rollback
    was recorded, holding a generation the server had not applied (a weight change), loaded the rolled-back
    candidate back into traffic until the next poll."""
    from modelyard.registry import register
    from modelyard.serving._app import Server
    from modelyard.serving._config import parse_config
    from modelyard.serving._routing import Route, Slot

    ctx = store.context()
    for _ in range(2):
        register(store, ctx, model_dir, "srv")
    deploy(store, ctx, "srv", version=2, mode="canary", weight=10)
    config = parse_config({"models": ["srv@1"], "auth": False})

    async def run() -> Slot | None:
        server = Server(config, store)
        route = Route("srv", None, Slot("srv", 1, "fp32", _Stub(), config))
        route.stable.batcher.start()
        await server._follow_deployment(route)
        assert route.candidate is not None and route.candidate.version == 2
        deploy(store, ctx, "srv", version=2, mode="canary", weight=20)  # not applied by this server yet
        stale = _deploy.current(store, ctx, "srv")  # read now, applied after the rollback below
        await server._rollback(route, "error rate over the SLO")
        assert route.candidate is None and route.unrecorded is None  # out, and recorded in the store
        now = _deploy.current(store, ctx, "srv")
        assert now is not None and now.mode == "off"
        monkeypatch.setattr(_deploy, "current", lambda *_: stale)
        await server._follow_deployment(route)
        left = route.candidate
        await server.stop()
        await route.stable.close()
        return left

    assert asyncio.run(run()) is None
