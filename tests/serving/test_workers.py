"""`yard serve --workers 2`: a real uvicorn parent with two worker processes over the same socket."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _served import (  # tests/serving/_served.py
    Served,
    Server,
    break_graph,
    descendants,
    group,
    launch,
    metric,
    stop,
    terminate,
)

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform

pytestmark = pytest.mark.slow

SOURCES = [
    "normalise date (de-DE): 02.03.2013",
    "normalise amount (en-US): $1,234.50",
    "normalise address (en-GB): 10 High Street, Leeds LS1 4AB",
]
TOKENS = 24


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _spread(server: Server, token: str, n: int, clients: int = 12) -> list[tuple[str, httpx.Response]]:
    """``n`` predictions from ``clients`` concurrent clients, each request on a new connection (a kept-alive
    connection stays with the worker that accepted it; new ones go to whichever worker accepts first).
    Returns (input, response) pairs."""
    url = f"{server.url}/v1/models/srv:predict"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    todo = list(range(n))
    out: list[tuple[str, httpx.Response]] = []
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=auth(token)) as client:

        async def one() -> None:
            while todo:
                text = SOURCES[todo.pop() % 3]
                r = await client.post(url, json={"inputs": [text], "parameters": {"max_new_tokens": TOKENS}})
                out.append((text, r))

        await asyncio.gather(*(one() for _ in range(clients)))
    return out


def _worker_pids(server: Server, timeout: float = 120) -> set[int]:
    """The pids of the two uvicorn workers (spawned children of `yard serve`) once both started."""
    deadline = time.monotonic() + timeout
    while True:
        pids = {pid for pid in descendants(server.proc.pid) if "spawn_main" in _cmdline(pid)}
        if len(pids) == 2:
            return pids
        assert time.monotonic() < deadline, f"no two workers: {pids}"
        time.sleep(0.2)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _metrics_dir(tmp: Path) -> Path:
    (found,) = list(tmp.glob("yard-metrics-*"))  # the parent's PROMETHEUS_MULTIPROC_DIR (TMPDIR is ours)
    return found


def _counting_pids(metrics_dir: Path) -> set[int]:
    """Workers that have counted at least one answered request (each writes counter_<pid>.db)."""
    names = (re.fullmatch(r"counter_(\d+)\.db", f.name) for f in metrics_dir.iterdir())
    return {int(m.group(1)) for m in names if m is not None}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_two_workers_answer_like_one_count_together_and_stop_cleanly(
    served: Served, server_factory: Any, tmp_path: Path
) -> None:
    one = server_factory()
    expected = httpx.post(
        f"{one.url}/v1/models/srv:predict",
        json={"inputs": SOURCES, "parameters": {"max_new_tokens": TOKENS}},
        headers=auth(served.token),
        timeout=60,
    ).json()["outputs"]
    stop(one)

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    two = server_factory(workers=2, env={"TMPDIR": str(tmp)})
    workers = _worker_pids(two)
    metrics_dir = _metrics_dir(tmp)
    assert metrics_dir.stat().st_mode & 0o077 == 0  # private to the server's user
    assert httpx.get(f"{two.url}/healthz").json() == {"status": "ok"}
    deadline = time.monotonic() + 120
    while httpx.get(f"{two.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    sent = 0
    for _ in range(10):  # until both workers have answered some (which worker accepts is the kernel's call)
        responses = asyncio.run(_spread(two, served.token, 48))
        sent += len(responses)
        bad = [(r.status_code, r.text[:200]) for _, r in responses if r.status_code != 200]
        assert not bad, bad
        for text, r in responses:  # the same answers as one worker gives
            assert r.json()["version"] == 1 and r.json()["outputs"] == [expected[SOURCES.index(text)]]
        if len(_counting_pids(metrics_dir)) == 2:
            break
    assert _counting_pids(metrics_dir) == workers, "the requests never reached both workers"

    # every scrape, whichever worker answers it, counts every worker's requests
    key = 'yard_requests_total{model="srv",route="stable",version="1"}'
    for _ in range(6):
        assert metric(two, "yard_requests_total") == {key: sent}
        with httpx.Client(headers={"Connection": "close"}) as fresh:
            assert fresh.get(f"{two.url}/readyz").json()["status"] == "ready"
    latency = metric(two, "yard_request_seconds_count")
    assert latency == {'yard_request_seconds_count{model="srv"}': sent}
    batches = metric(two, "yard_batch_size_sum")
    assert batches['yard_batch_size_sum{model="srv",version="1"}'] == sent  # one input per request
    info = metric(two, "yard_model_info")
    assert info == {'yard_model_info{model="srv",route="stable",variant="onnx-fp32",version="1"}': 1}
    deadline = time.monotonic() + 10  # each worker publishes its queue depth every second
    while metric(two, "yard_queue_depth") != {'yard_queue_depth{model="srv",version="1"}': 0}:
        assert time.monotonic() < deadline, metric(two, "yard_queue_depth")
        time.sleep(0.2)

    # a worker that dies (SIGKILL: no clean stop) is replaced; its counts stay, its live gauges go
    dead = min(workers)
    os.kill(dead, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while (workers := _worker_pids(two)) and dead in workers:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert metric(two, "yard_requests_total") == {key: sent}
    assert metric(two, "yard_model_info") == info
    assert not list(metrics_dir.glob(f"gauge_live*_{dead}.db"))
    r = httpx.post(
        f"{two.url}/v1/models/srv:predict",
        json={"inputs": SOURCES[:1], "parameters": {"max_new_tokens": TOKENS}},
        headers=auth(served.token),
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["outputs"] == expected[:1]

    assert workers <= group(two)
    assert terminate(two) == 0
    deadline = time.monotonic() + 10
    while left := group(two):  # no worker outlives the server
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.1)
    assert not metrics_dir.exists()  # the shared metrics are removed with the server
    log = two.log.read_text()
    assert "Traceback" not in log and "error" not in log.lower(), log[-3000:]


def test_two_workers_follow_an_alias_move_and_the_merged_metrics_follow(
    served: Served, server_factory: Any
) -> None:
    two = server_factory(workers=2)

    def versions() -> set[int]:
        responses = asyncio.run(_spread(two, served.token, 24))
        assert {r.status_code for _, r in responses} == {200}
        return {r.json()["version"] for _, r in responses}

    assert versions() == {1}
    try:
        with Platform(load_settings(home=served.home)) as p:
            registry.set_alias(p, p.context(), "srv@2", "live", reason="workers test")
        deadline = time.monotonic() + 30
        while metric(two, "yard_model_info") != {
            'yard_model_info{model="srv",route="stable",variant="onnx-int8",version="2"}': 1
        }:  # both workers swapped: no live worker still reports version 1
            assert time.monotonic() < deadline, metric(two, "yard_model_info")
            time.sleep(0.2)
        assert versions() == {2}
        assert set(metric(two, "yard_queue_depth")) == {'yard_queue_depth{model="srv",version="2"}'}
    finally:
        with Platform(load_settings(home=served.home)) as p:
            registry.set_alias(p, p.context(), "srv@1", "live")


def test_feedback_reaches_a_prediction_another_worker_answered(served: Served, server_factory: Any) -> None:
    two = server_factory(workers=2)
    url = f"{two.url}/v1/models/srv"
    for i in range(12):
        # new connections: the prediction and its feedback often land on different workers, and the
        # prediction may still sit in the other worker's log buffer
        with httpx.Client(headers={**auth(served.token), "Connection": "close"}, timeout=60) as client:
            r = client.post(f"{url}:predict", json={"inputs": [SOURCES[i % 3]]})
            assert r.status_code == 200, r.text
            ok = client.post(f"{url}:feedback", json={"request_id": r.json()["request_id"], "target": "x"})
            assert ok.status_code == 200, (i, ok.text)


def test_a_worker_that_cannot_load_its_model_fails_the_server(served: Served, tmp_path: Path) -> None:
    with Platform(load_settings(home=served.home)) as p:
        registry.download(p, p.context(), "srv@1", tmp_path / "export")
        break_graph(tmp_path / "export")
        registry.register(p, p.context(), tmp_path / "export", "srv-unloadable")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = launch(served, tmp_path, env={"TMPDIR": str(tmp)}, models=["srv-unloadable@1"], workers=2)
    try:
        code = server.proc.wait(timeout=120)
        deadline = time.monotonic() + 10
        while (left := group(server)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(server)
    log = server.log.read_text()
    assert code == 1, log[-3000:]
    assert "error: a worker could not start serving" in log
    assert not left and not list(tmp.glob("yard-metrics-*"))  # no worker, no metrics directory left


def test_workers_stop_when_yard_serve_is_killed(served: Served, server_factory: Any) -> None:
    two = server_factory(workers=2)
    workers = _worker_pids(two)
    os.kill(two.proc.pid, signal.SIGKILL)  # no chance to stop them: they notice and stop themselves
    two.proc.wait()
    deadline = time.monotonic() + 15
    while left := group(two):
        assert time.monotonic() < deadline, f"orphans still running: {left} (workers {workers})"
        time.sleep(0.1)
    assert "the yard serve process" in two.log.read_text()
