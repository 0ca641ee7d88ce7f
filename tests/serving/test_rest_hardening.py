"""The REST surface against a hostile client: the app in this process over a real (PyTorch) version, driven
through httpx's ASGI transport or raw ASGI messages where a client misbehaves below HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform, create_token
from modelyard.serving import create_app, parse_config
from modelyard.testing import TrainedModel, fresh_postgres_database, make_platform

pytestmark = pytest.mark.slow
PREDICT = "/v1/models/hard:predict"
FEEDBACK = "/v1/models/hard:feedback"


@pytest.fixture(scope="module")
def platform(trained: TrainedModel) -> Iterator[Platform]:
    pytest.importorskip("fastapi")
    p = Platform(load_settings(home=trained.home))
    registry.register(p, p.context(), trained.model_dir, "hard")
    yield p
    p.close()


@pytest.fixture(scope="module")
def token(platform: Platform) -> str:
    return create_token(platform, platform.context(), platform.context().user)[1]


def _response(conn: Any) -> bytes:
    """One whole HTTP response from ``conn`` (headers and a Content-Length body): they may come in more
    than one recv, and a body left unread would be taken for the start of the next response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(v)
        for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        chunk = conn.recv(4096)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


@asynccontextmanager
async def serving(platform: Platform, **config: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app (lifespan run) and a client addressing it as http://127.0.0.1."""
    app = create_app(parse_config({"models": ["hard@1"], **config}), platform)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
            yield app, client


def test_without_auth_only_requests_addressed_to_loopback_are_answered(platform: Platform) -> None:
    """auth: false is allowed on loopback alone, but a page in the user's browser reaches loopback through DNS
    rebinding (attacker.example resolving to 127.0.0.1): it must not predict, post feedback or read what is
    served. Its requests carry its own name in Host."""

    async def run() -> None:
        async with serving(platform, auth=False) as (_, client):
            evil = {"host": "attacker.example:8000"}
            for method, path, body in (
                ("POST", PREDICT, {"inputs": ["normalise amount (en-US): $12"]}),
                ("POST", FEEDBACK, {"request_id": "0" * 26, "target": "x"}),
                ("GET", "/v1/models", None),
                ("GET", "/metrics", None),
            ):
                r = await client.request(method, path, json=body, headers=evil)
                assert r.status_code == 421, (path, r.status_code, r.text)
                assert r.json()["error"]["code"] == "misdirected_request"
                assert "hard" not in r.text
            for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000"):
                r = await client.post(PREDICT, json={"inputs": ["x"]}, headers={"host": host})
                assert r.status_code == 200, (host, r.text)
            assert (await client.get("/healthz", headers=evil)).status_code == 200  # nothing in it

    asyncio.run(run())


def test_with_auth_the_host_is_not_checked(platform: Platform, token: str) -> None:
    async def run() -> None:
        async with serving(platform) as (_, client):
            r = await client.post(
                PREDICT,
                json={"inputs": ["x"]},
                headers={"host": "models.example", "authorization": f"Bearer {token}"},
            )
            assert r.status_code == 200, r.text

    asyncio.run(run())


async def _raw(app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]) -> list[Any]:
    """One request as ASGI messages (what uvicorn hands the app when a client hangs up mid-body)."""
    sent: list[Any] = []
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()  # nothing more ever comes
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PREDICT,
        "raw_path": PREDICT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)
    return sent


def test_a_client_that_hangs_up_mid_body_is_not_a_server_error(
    platform: Platform, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It was answered 500, counted as internal_error and logged with a traceback: any client could fill the
    log and the error metric (and the alerts on it) by hanging up."""

    async def run() -> str:
        async with serving(platform) as (app, client):
            auth = [(b"authorization", f"Bearer {token}".encode())]
            for _ in range(3):
                part = {"type": "http.request", "body": b'{"inputs": ["x', "more_body": True}
                sent = await _raw(app, [part, {"type": "http.disconnect"}], auth)
                assert sent[0]["status"] == 499, sent
            return (await client.get("/metrics")).text

    with caplog.at_level(logging.ERROR, "modelyard.serving"):
        metrics = asyncio.run(run())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert 'yard_errors_total{code="client_closed"} 3.0' in metrics
    assert 'code="internal_error"' not in metrics


def test_what_is_not_json_or_is_ambiguous_is_refused(platform: Platform, token: str) -> None:
    """json.loads takes NaN and Infinity (not JSON, RFC 8259) and lets the last of duplicate keys win: a proxy
    or filter in front that reads the first "inputs" saw other inputs than the model got."""

    async def run() -> None:
        async with serving(platform) as (_, client):
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            for body in (
                b'{"inputs": ["checked"], "inputs": ["normalise amount (en-US): $12"]}',
                b'{"inputs": ["x"], "parameters": {"max_new_tokens": 4, "max_new_tokens": 8}}',
                b'{"inputs": ["x"], "key": NaN}',
                b'{"inputs": ["x"], "parameters": {"max_new_tokens": -Infinity}}',
            ):
                r = await client.post(PREDICT, content=body, headers=headers)
                assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json", (body, r.text)
            r = await client.post(
                FEEDBACK, content=b'{"request_id": "x", "target": "a", "target": "b"}', headers=headers
            )
            assert r.status_code == 400, r.text
            # keys that only look alike are different keys
            r = await client.post(PREDICT, content=b'{"inputs": ["x"], "Inputs": ["y"]}', headers=headers)
            assert r.status_code == 422, r.text

    asyncio.run(run())


def test_error_messages_quote_a_bounded_part_of_the_request(platform: Platform, token: str) -> None:
    """An unknown field or parameter was echoed whole: a 1 MB field name came back as a 1 MB error (and
    into anything that logs error messages)."""

    async def run() -> None:
        async with serving(platform) as (_, client):
            auth = {"authorization": f"Bearer {token}"}
            name = "f" * 500_000
            for body in ({"inputs": ["x"], name: 1}, {"inputs": ["x"], "parameters": {name: 1}}):
                r = await client.post(PREDICT, json=body, headers=auth)
                assert r.status_code == 422 and len(r.content) < 500, len(r.content)
                assert "'ffff" in r.json()["error"]["message"]  # still says which one
            r = await client.post(f"/v1/models/{'m' * 5000}:predict", json={"inputs": ["x"]}, headers=auth)
            assert r.status_code == 404 and len(r.content) < 500, len(r.content)

    asyncio.run(run())


def test_a_store_outage_does_not_tell_clients_where_the_store_is(
    trained: TrainedModel, tmp_path: Path
) -> None:
    """Tokens are resolved in the metadata store, so when it is down any client, token or not, got a 503
    whose message was the driver's error with the store's URL: its user, host, port and database name."""
    import os

    from sqlalchemy import create_engine, make_url, text

    server = os.environ.get("YARD_TEST_DATABASE_URL")
    if not server:
        pytest.skip("YARD_TEST_DATABASE_URL is not set")
    with fresh_postgres_database(server) as url:
        name = make_url(url).database
        p = make_platform(tmp_path / "home", database_url=url)
        admin = create_engine(
            make_url(server).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
        )
        try:
            registry.register(p, p.context(), trained.model_dir, "hard")

            async def run() -> httpx.Response:
                async with serving(p) as (_, client):
                    with admin.connect() as conn:  # the store goes away: no connection is taken
                        conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
                        conn.execute(
                            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                            {"n": name},
                        )
                    try:
                        return await client.post(
                            PREDICT, json={"inputs": ["x"]}, headers={"authorization": "Bearer yard_a_b"}
                        )
                    finally:
                        with admin.connect() as conn:
                            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))

            r = asyncio.run(run())
        finally:
            p.close()
            admin.dispose()
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_error", r.text
    host = make_url(server).host
    assert name not in r.text and str(host) not in r.text and "postgres" not in r.text, r.text


def test_a_client_that_never_finishes_its_headers_is_disconnected(platform: Platform) -> None:
    """uvicorn timed out idle kept-alive connections, never one that had not sent a whole request: a client
    that connected and sent nothing, or trickled its headers (slowloris), held a connection for ever."""
    import socket
    import threading

    import uvicorn

    from modelyard.serving._http import uvicorn_options

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = parse_config({"models": ["hard@1"], "port": port, "limits": {"read_timeout_s": 1}})
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, platform), **uvicorn_options(cfg)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            threading.Event().wait(0.05)
        silent = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
        for conn in (silent, trickle):
            with conn:
                conn.settimeout(60)
                assert conn.recv(100) == b""  # closed by the server, long before this timeout
        # a request whose headers came in time is answered, and its connection kept for the next one
        with socket.create_connection(("127.0.0.1", port)) as ok:
            ok.settimeout(60)
            for _ in range(2):
                ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert _response(ok).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def test_a_trailing_slash_is_not_redirected_to_the_host_the_client_named(platform: Platform) -> None:
    """Starlette answered /v1/models/hard:predict/ (and any path with a trailing slash) with a 307 to the same
    path on whatever host the request's Host header named, before any token was checked: a redirect built
    from client input (Host header injection, poison for a cache in front), and not an error body."""

    async def run() -> None:
        async with serving(platform) as (_, client):
            for path in (f"{PREDICT}/", "/healthz/", "/v1/models/"):
                r = await client.post(path, json={"inputs": ["x"]}, headers={"host": "attacker.example"})
                assert r.status_code == 404 and "location" not in r.headers, (path, r.status_code)
                assert r.json()["error"]["code"] == "not_found"

    asyncio.run(run())


def test_a_server_failure_that_is_not_an_outage_is_not_called_one(platform: Platform) -> None:
    """The 503 of a failure other than the store's (a file failing its digest, a key that does not unwrap)
    told clients to retry because the storage was unreachable; it names its code (the log has the detail)."""
    from modelyard.errors import BackendError, IntegrityError, YardError

    async def run() -> list[dict[str, Any]]:
        async with serving(platform) as (app, _):
            handler = app.exception_handlers[YardError]
            out = []
            for exc in (
                IntegrityError("weights.safetensors of hard@1 does not match"),
                BackendError("db down"),
            ):
                response = await handler(None, exc)
                assert response.status_code == 503
                out.append(json.loads(response.body)["error"])
            return out

    integrity, backend = asyncio.run(run())
    assert integrity == {
        "code": "integrity_error",
        "message": "the server could not answer (integrity_error); its log says why",
    }
    assert backend["code"] == "backend_error" and "cannot reach its storage" in backend["message"]


def test_no_answer_may_be_cached_or_sniffed(platform: Platform, token: str) -> None:
    """Predictions may hold personal data: no answer, error or not, may be kept by a cache or read as HTML."""

    async def run() -> list[httpx.Response]:
        async with serving(platform) as (_, client):
            auth = {"authorization": f"Bearer {token}"}
            return [
                await client.post(PREDICT, json={"inputs": ["normalise amount (en-US): $12"]}, headers=auth),
                await client.post(PREDICT, json={"inputs": ["x"]}),  # 401
                await client.get("/healthz"),
                await client.get("/nowhere"),
            ]

    for r in asyncio.run(run()):
        assert r.headers["cache-control"] == "no-store", (r.status_code, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff"
