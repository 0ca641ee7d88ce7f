"""`yard serve` end to end: a real uvicorn process, real HTTP, real ONNX models from the registry."""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _served import Served, Server, metric  # tests/serving/_served.py
from sqlalchemy import select

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.serving import OnnxSeq2Seq, deploy, predictions
from modelyard.serving._predlog import prediction_id

pytestmark = pytest.mark.slow

SOURCES = [
    "normalise date (de-DE): 02.03.2013",
    "normalise amount (en-US): $1,234.50",
    "normalise address (en-GB): 10 High Street, Leeds LS1 4AB",
]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def predict(server: Server, token: str, inputs: list[str], **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/srv:predict",
        json={"inputs": inputs, **body},
        headers=auth(token),
        timeout=60,
    )


def platform_of(served: Served) -> Platform:
    return Platform(load_settings(home=served.home))


def test_predict_answers_like_the_model_and_the_endpoints_work(
    served: Served, server_factory: Any, tmp_path: Path
) -> None:
    server = server_factory()
    with platform_of(served) as p:
        expected_dir = tmp_path / "v1"
        registry.download(p, p.context(), "srv@1", expected_dir)
    expected = OnnxSeq2Seq(expected_dir).generate(SOURCES, max_new_tokens=24)
    r = predict(server, served.token, SOURCES, parameters={"max_new_tokens": 24})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == expected and body["version"] == 1 and body["model"] == "srv"
    assert r.headers["x-request-id"] == body["request_id"] and r.headers["x-model-version"] == "1"
    one_by_one = [
        predict(server, served.token, [s], parameters={"max_new_tokens": 24}).json()["outputs"][0]
        for s in SOURCES
    ]
    assert one_by_one == expected  # batching never changes an answer

    models = httpx.get(f"{server.url}/v1/models", headers=auth(served.token)).json()["models"]
    assert models == [{"name": "srv", "alias": "live", "version": 1, "variant": "onnx-fp32"}]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"
    openapi = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/models/{name}:predict" in openapi["paths"]
    assert (
        metric(server, "yard_requests_total")['yard_requests_total{model="srv",route="stable",version="1"}']
        == 4
    )
    assert (
        metric(server, "yard_model_info")[
            'yard_model_info{model="srv",route="stable",variant="onnx-fp32",version="1"}'
        ]
        == 1
    )


def test_tokens(served: Served, server_factory: Any) -> None:
    server = server_factory()
    url = f"{server.url}/v1/models/srv:predict"
    r = httpx.post(url, json={"inputs": SOURCES[:1]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, json={"inputs": ["x"]}, headers=auth("yard_nope_nope")).status_code == 401
    assert httpx.post(url, json={"inputs": ["x"]}, headers={"Authorization": "Basic abc"}).status_code == 401
    r = httpx.post(url, json={"inputs": ["x"]}, headers=auth(served.other_token))
    assert r.status_code == 403 and "elsewhere" in r.json()["error"]["message"]
    assert "default" not in r.json()["error"]["message"]  # the server's project: not another tenant's
    # Without a token nothing says what is served: an unknown model is 401 too, and /readyz names nothing.
    for path in ("/v1/models/secret:predict", "/v1/models/secret:feedback"):
        assert httpx.post(f"{server.url}{path}", json={"inputs": ["x"]}).status_code == 401
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    assert predict(server, served.token, ["x"]).status_code == 200


BAD: list[tuple[str, dict[str, Any], int]] = [
    ("malformed JSON", {"content": b'{"inputs": ["a"', "headers": {"content-type": "application/json"}}, 400),
    (
        "deep nesting",
        {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}},
        400,
    ),
    ("not an object", {"json": ["a", "b"]}, 422),
    ("no inputs", {"json": {"parameters": {}}}, 422),
    ("empty inputs", {"json": {"inputs": []}}, 422),
    ("an empty input", {"json": {"inputs": ["  "]}}, 422),
    ("inputs of the wrong type", {"json": {"inputs": "normalise this"}}, 422),
    ("a number as input", {"json": {"inputs": [42]}}, 422),
    ("an input over the length limit", {"json": {"inputs": ["x" * 5000]}}, 422),
    ("too many inputs", {"json": {"inputs": ["x"] * 65}}, 422),
    ("an unknown field", {"json": {"inputs": ["x"], "__class__": "os.system"}}, 422),
    ("max_new_tokens as text", {"json": {"inputs": ["x"], "parameters": {"max_new_tokens": "9"}}}, 422),
    ("max_new_tokens too large", {"json": {"inputs": ["x"], "parameters": {"max_new_tokens": 10**9}}}, 422),
    ("max_new_tokens as a bool", {"json": {"inputs": ["x"], "parameters": {"max_new_tokens": True}}}, 422),
    ("an unknown parameter", {"json": {"inputs": ["x"], "parameters": {"temperature": 2}}}, 422),
    (
        "a body over the size cap",
        {
            "content": b'{"inputs": ["' + b"x" * (2 << 20) + b'"]}',
            "headers": {"content-type": "application/json"},
        },
        413,
    ),
    (
        "a pickle",
        {
            "content": pickle.dumps({"inputs": ["x"]}),
            "headers": {"content-type": "application/x-python-pickle"},
        },
        415,
    ),
    ("form data", {"data": {"inputs": "x"}}, 415),
    # Valid JSON, but not text: a tokenizer (or the prediction log's database) fails on it.
    (
        "a lone surrogate",
        {"content": b'{"inputs": ["x \\ud800"]}', "headers": {"content-type": "application/json"}},
        400,
    ),
    (  # JSON over HTTP is UTF-8; json.loads would read this (and its lone surrogate) as UTF-16
        "UTF-16",
        {
            "content": '{"inputs": ["x \\ud800"]}'.encode("utf-16"),
            "headers": {"content-type": "application/json"},
        },
        400,
    ),
    (
        "a lone surrogate in a key",
        {"content": b'{"inputs": ["x"], "\\udfff": 1}', "headers": {"content-type": "application/json"}},
        400,
    ),
    ("no content type", {"content": b'{"inputs": ["x"]}', "headers": {"content-type": ""}}, 415),
]


def test_bad_input_is_answered_and_the_server_stays_healthy(served: Served, server_factory: Any) -> None:
    server = server_factory()
    url = f"{server.url}/v1/models/srv:predict"
    with httpx.Client(timeout=60, headers=auth(served.token)) as client:
        for _ in range(3):  # a flood of them
            for what, kwargs, status in BAD:
                r = client.post(url, **kwargs)
                assert r.status_code == status, (what, r.status_code, r.text[:300])
                assert "code" in r.json()["error"], what

        # a streamed body with no Content-Length is cut off at the cap too
        def chunks() -> Any:
            yield b'{"inputs": ["'
            for _ in range(3000):
                yield b"x" * 1024
            yield b'"]}'

        r = client.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert client.post(f"{server.url}/v1/models/nope:predict", json={"inputs": ["x"]}).status_code == 404
        assert client.get(url).status_code == 405
        assert client.get(f"{server.url}/healthz").status_code == 200
        # A surrogate pair is text (one character): answered.
        pair = b'{"inputs": ["normalise amount (en-US): \\ud83d\\ude00 12"]}'
        assert client.post(url, content=pair, headers={"content-type": "application/json"}).status_code == 200
        assert client.post(url, json={"inputs": SOURCES}).status_code == 200
    assert server.proc.poll() is None
    errors = metric(server, "yard_errors_total")  # every kind of error answer is counted by its code
    for code in ("malformed_json", "validation_error", "not_found", "method_not_allowed"):
        assert errors[f'yard_errors_total{{code="{code}"}}'] >= 1, (code, errors)


def test_a_body_that_does_not_arrive_is_answered_408(served: Served, server_factory: Any) -> None:
    server = server_factory(limits={"read_timeout_s": 1})
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            (
                f"POST /v1/models/srv:predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.token}\r\n"
                'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inputs": ['
            ).encode()
        )
        conn.settimeout(30)
        answer = ""
        while "request_timeout" not in answer:  # headers and body may come in separate segments
            part = conn.recv(4096).decode()
            if not part:
                break
            answer += part
    assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer, answer
    assert predict(server, served.token, SOURCES[:1]).status_code == 200


def test_an_input_the_model_fails_on_fails_only_its_own_request_and_never_a_canary(
    served: Served, server_factory: Any
) -> None:
    # Version 3 fails on any input holding "normalise" (its tokenizer's id for it is past the embeddings).
    server = server_factory(
        models=["srv@3"],
        batching={"max_wait_ms": 500},  # requests sent together share a batch
        canary={"max_error_rate": 0.2, "max_p95_ms": 60_000, "window_s": 60, "min_requests": 3},
    )
    url = f"{server.url}/v1/models/srv:predict"
    good, bad = {"inputs": ["convert 02.03.2013", "convert $12"]}, {"inputs": [SOURCES[0]]}

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers=auth(served.token)) as client:
            return list(await asyncio.gather(client.post(url, json=good), client.post(url, json=bad)))

    answered, failed = asyncio.run(together())
    assert answered.status_code == 200 and len(answered.json()["outputs"]) == 2, answered.text
    assert failed.status_code == 500
    sizes = metric(server, "yard_batch_size")  # they shared a batch (3 inputs): the model ran them together
    up_to_2 = next(v for k, v in sizes.items() if "_bucket" in k and 'le="2.0"' in k)
    assert up_to_2 < next(v for k, v in sizes.items() if "_count" in k), sizes
    with platform_of(served) as p:
        deploy(p, p.context(token=served.approver), "srv", version=3, mode="canary", weight=100)
    try:
        _wait_for_mode(server, served, "canary")
        # Input every version fails on is the client's fault: it fails, and the candidate is not charged.
        for _ in range(6):
            assert httpx.post(url, json=bad, headers=auth(served.token), timeout=60).status_code == 500
        models = httpx.get(f"{server.url}/v1/models", headers=auth(served.token)).json()["models"]
        assert models[0]["candidate"]["version"] == 3, models
        assert not metric(server, "yard_candidate_errors_total")
        assert not metric(server, "yard_canary_rollbacks_total")
        assert predict(server, served.token, good["inputs"]).status_code == 200
        # The same for a shadow candidate, which never answers the client.
        with platform_of(served) as p:
            deploy(p, p.context(token=served.engineer), "srv", version=3, mode="shadow")
        _wait_for_mode(server, served, "shadow")
        for _ in range(6):
            assert httpx.post(url, json=bad, headers=auth(served.token), timeout=60).status_code == 500
        time.sleep(1.0)  # shadow requests run beside the answer
        assert not metric(server, "yard_candidate_errors_total")
        assert not metric(server, "yard_canary_rollbacks_total")
    finally:
        with platform_of(served) as p:
            deploy(p, p.context(token=served.engineer), "srv", version=None, mode="off")


async def _hammer(
    url: str, token: str, clients: int, seconds: float, on_response: Any = None
) -> tuple[list[float], list[int], set[int]]:
    latencies: list[float] = []
    statuses: list[int] = []
    versions: set[int] = set()
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=auth(token)) as client:

        async def one(i: int) -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        url,
                        json={
                            "inputs": [SOURCES[i % 3]],
                            "key": f"user-{i}",
                            "parameters": {"max_new_tokens": 16},
                        },
                    )
                except httpx.HTTPError:
                    statuses.append(-1)  # dropped
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["version"])
                if on_response is not None:
                    await on_response(r)

        await asyncio.gather(*(one(i) for i in range(clients)))
    return latencies, statuses, versions


def test_200_concurrent_clients_for_30_seconds(served: Served, server_factory: Any) -> None:
    server = server_factory(batching={"max_batch_size": 16, "max_wait_ms": 5, "max_queue": 1024})
    url = f"{server.url}/v1/models/srv:predict"
    latencies, statuses, _ = asyncio.run(_hammer(url, served.token, 200, 30))
    bad = [s for s in statuses if s != 200]
    assert not bad, f"{len(bad)} of {len(statuses)} failed: {sorted(set(bad))}"
    buckets = metric(server, "yard_batch_size_bucket")
    le16 = next(v for k, v in buckets.items() if 'le="16.0"' in k)
    total = next(v for k, v in buckets.items() if 'le="+Inf"' in k)
    assert le16 == total > 0  # no batch over the cap
    assert any(v < le16 for k, v in buckets.items() if 'le="1.0"' in k)  # and batching happened
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(
        f"\n200 clients, 30 s: {len(latencies)} requests, {len(latencies) / 30:.0f}/s, "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )


def test_a_full_queue_answers_429_with_retry_after(served: Served, server_factory: Any) -> None:
    server = server_factory(
        batching={"max_batch_size": 1, "max_wait_ms": 0, "max_queue": 2}, limits={"max_inputs": 2}
    )
    url = f"{server.url}/v1/models/srv:predict"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, headers=auth(served.token)) as client:
            return await asyncio.gather(*(client.post(url, json={"inputs": SOURCES[:2]}) for _ in range(30)))

    responses = asyncio.run(burst())
    codes = {r.status_code for r in responses}
    assert codes <= {200, 429} and 429 in codes and 200 in codes
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["code"] == "overloaded"


def test_a_failing_canary_is_rolled_back_automatically(served: Served, server_factory: Any) -> None:
    server = server_factory(
        canary={"max_error_rate": 0.2, "max_p95_ms": 60_000, "window_s": 30, "min_requests": 5}
    )
    with platform_of(served) as p:
        engineer = p.context(token=served.engineer)
        deploy(p, engineer, "srv", version=3, mode="canary", weight=50, reason="try the new export")
    deadline = time.monotonic() + 30
    while (
        httpx.get(f"{server.url}/v1/models", headers=auth(served.token)).json()["models"][0].get("candidate")
        is None
    ):
        assert time.monotonic() < deadline, "the server did not pick up the canary"
        time.sleep(0.2)
    started = time.monotonic()
    seen = []
    for i in range(80):
        r = predict(server, served.token, [SOURCES[i % 3]], key=f"k{i}")
        assert r.status_code == 200, r.text  # a failing canary never fails a client: stable answers
        seen.append(r.json()["version"])
        if (
            "candidate"
            not in httpx.get(f"{server.url}/v1/models", headers=auth(served.token)).json()["models"][0]
        ):
            break
    else:
        raise AssertionError("the canary was never rolled back")
    assert time.monotonic() - started < 30  # within the configured window
    assert set(seen) == {1}  # the broken candidate never produced an answer
    for i in range(10):  # traffic is back on the stable version
        assert predict(server, served.token, [SOURCES[0]], key=f"k{i}").headers["x-model-version"] == "1"
    with platform_of(served) as p:
        from modelyard.serving._deploy import current

        dep = current(p, p.context(), "srv")
        assert dep is not None and dep.mode == "off" and "automatic rollback: error rate" in dep.reason
        with p.db.read() as s:
            records = s.scalars(select(AuditRecord).where(AuditRecord.resource == "deployment:srv")).all()
        details = [json.loads(r.detail) if isinstance(r.detail, str) else r.detail for r in records]
        assert any(d.get("automatic") for d in details)
    assert metric(server, "yard_canary_rollbacks_total")['yard_canary_rollbacks_total{model="srv"}'] == 1


def _wait_for_mode(server: Server, served: Served, mode: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        model = httpx.get(f"{server.url}/v1/models", headers=auth(served.token)).json()["models"][0]
        if model.get("candidate", {}).get("mode") == mode:
            return
        assert time.monotonic() < deadline, f"the server did not pick up the {mode} deployment: {model}"
        time.sleep(0.2)


def test_a_client_that_hangs_up_takes_its_inputs_out_of_the_queue(
    served: Served, server_factory: Any
) -> None:
    """Queued inputs of a client that went away stayed queued until they ran or timed out: a few cheap
    requests, each closed at once, kept the queue full and everyone else at 429 (helper-29)."""
    server = server_factory(batching={"max_batch_size": 16, "max_queue": 256})
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"inputs": ["x " * 1000] * 64, "parameters": {"max_new_tokens": 256}}).encode()
    head = (
        f"POST /v1/models/srv:predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(4):  # 256 inputs: the queue is full
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head + body)
            time.sleep(0.05)  # then the client goes away
    deadline = time.monotonic() + 15
    depth = 256.0
    while time.monotonic() < deadline:
        depth = sum(metric(server, "yard_queue_depth").values())
        if depth <= 16:  # at most the batch that was already running
            break
        time.sleep(0.2)
    assert depth <= 16, depth
    assert predict(server, served.token, SOURCES[:1]).status_code == 200


def test_a_blue_green_alias_change_under_load_drops_nothing(served: Served, server_factory: Any) -> None:
    server = server_factory()
    url = f"{server.url}/v1/models/srv:predict"

    async def run() -> tuple[list[float], list[int], set[int]]:
        async def move_alias() -> None:
            await asyncio.sleep(3)
            with platform_of(served) as p:
                registry.set_alias(p, p.context(), "srv@2", "live", reason="blue-green test")

        mover = asyncio.create_task(move_alias())
        result = await _hammer(url, served.token, 20, 12)
        await mover
        return result

    try:
        _, statuses, versions = asyncio.run(run())
        assert set(statuses) == {200}, sorted(set(statuses))
        assert versions == {1, 2}  # both served, no request lost in the swap
        r = predict(server, served.token, SOURCES[:1])
        assert r.json()["version"] == 2
    finally:
        with platform_of(served) as p:
            registry.set_alias(p, p.context(), "srv@1", "live")


def test_ab_is_sticky_and_shadow_never_answers(served: Served, server_factory: Any) -> None:
    server = server_factory()
    with platform_of(served) as p:
        engineer = p.context(token=served.engineer)
        deploy(p, engineer, "srv", version=2, mode="ab", weight=50)
        _wait_for_candidate(server, served, "ab")
        first = {
            k: predict(server, served.token, [SOURCES[0]], key=k).json()["version"]
            for k in map(str, range(40))
        }
        again = {
            k: predict(server, served.token, [SOURCES[0]], key=k).json()["version"]
            for k in map(str, range(40))
        }
        assert first == again and set(first.values()) == {1, 2}
        assert 8 <= sum(v == 2 for v in first.values()) <= 32

        since = registry.show(p, p.context(), "srv@1").created_at
        deploy(p, engineer, "srv", version=2, mode="shadow")
        _wait_for_candidate(server, served, "shadow")
        answered = {predict(server, served.token, [s]).json()["version"] for s in SOURCES * 3}
        assert answered == {1}
        time.sleep(2)  # the shadow copies and the log's flush
        logged = predictions(p, p.context(), "srv", since=since)
        assert {(x.route, x.version) for x in logged} >= {("stable", 1), ("shadow", 2)}
        deploy(p, engineer, "srv", version=None, mode="off")


def _wait_for_candidate(server: Server, served: Served, mode: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        models = httpx.get(f"{server.url}/v1/models", headers=auth(served.token)).json()["models"]
        if models[0].get("candidate", {}).get("mode") == mode:
            return
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_one_worker_ignores_a_prometheus_directory_left_in_its_environment(
    served: Served, server_factory: Any, tmp_path: Path
) -> None:
    """A PROMETHEUS_MULTIPROC_DIR from elsewhere made a one-worker server write its metrics into that
    directory (or fail to start when it was gone) (helper-29)."""
    foreign = tmp_path / "someone-elses-metrics"
    foreign.mkdir()
    server = server_factory(env={"PROMETHEUS_MULTIPROC_DIR": str(foreign)})
    with httpx.Client(timeout=60, headers=auth(served.token)) as client:
        assert (
            client.post(f"{server.url}/v1/models/srv:predict", json={"inputs": SOURCES[:1]}).status_code
            == 200
        )
        assert "yard_requests_total" in client.get(f"{server.url}/metrics").text
    assert list(foreign.iterdir()) == []


def test_feedback_is_recorded_for_a_logged_prediction(served: Served, server_factory: Any) -> None:
    server = server_factory()
    r = predict(server, served.token, SOURCES[:1])
    rid = r.json()["request_id"]
    url = f"{server.url}/v1/models/srv:feedback"
    ok = httpx.post(
        url,
        json={"request_id": rid, "target": "2013-03-02 (mail me at a@b.example)"},
        headers=auth(served.token),
    )
    assert ok.status_code == 200, ok.text
    assert (
        httpx.post(url, json={"request_id": "0" * 26, "target": "x"}, headers=auth(served.token)).status_code
        == 404
    )
    assert httpx.post(url, json={"request_id": rid}, headers=auth(served.token)).status_code == 422
    with platform_of(served) as p:
        logged = {
            x.id: x
            for x in predictions(
                p, p.context(), "srv", since=registry.show(p, p.context(), "srv@1").created_at
            )
        }
    assert (
        logged[prediction_id(rid, 0)].target is not None
        and "a@b.example" not in logged[prediction_id(rid, 0)].target
    )  # PII redacted
    assert logged[prediction_id(rid, 0)].target == "2013-03-02 (mail me at <EMAIL>)"
