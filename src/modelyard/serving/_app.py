"""The serving app: FastAPI (app factory) over registered versions, with dynamic batching, token auth,
A/B, canary and shadow traffic, blue-green alias swaps, the prediction log and Prometheus metrics.

```
POST /v1/models/{name}:predict   {"inputs": ["..."], "parameters": {"max_new_tokens": 32}, "key": "user-7"}
POST /v1/models/{name}:feedback  {"request_id": "...", "index": 0, "target": "..."}
GET  /v1/models | /healthz | /readyz | /metrics | /openapi.json
```

Bad input is answered, never crashes the server, and costs little: the body size is checked before it is
read (413), the content type before it is parsed (415: JSON only, so never a pickle), JSON errors and deep
nesting are 400, wrong shapes and limits 422, a full queue 429 with Retry-After, a request past its
timeout 504. Every error body is ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from modelyard.core._platform import Context, Platform
from modelyard.errors import (
    AuthenticationError,
    BackendError,
    NotFoundError,
    PermissionDeniedError,
    UsageError,
    ValidationError,
    YardError,
)
from modelyard.serving._batcher import Draining, QueueFull
from modelyard.serving._config import LOCAL_HOSTS, ServeConfig
from modelyard.serving._metrics import Metrics
from modelyard.serving._predlog import new_request_id
from modelyard.serving._routing import Params, Route, Slot, SloWindow

log = logging.getLogger("modelyard.serving")
LOAD_RETRY_S = 60.0  # a version that failed to load is tried again after this
STOP_WAIT_S = 10.0  # how long a stopping server waits for its background tasks
FEEDBACK_GRACE_S = 2.0  # several workers or replicas: how long past flush_s feedback waits for its prediction
_KEYS = frozenset({"inputs", "parameters", "key"})
# A \uD800-\uDFFF escape: JSON decodes a lone one into a string that is not text (it cannot be encoded),
# which a tokenizer or a database then fails on. Only bodies holding one are searched for them.
# A lone surrogate or a NUL can only arrive as an escape: look for them when the body has one.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")


class _NotYet(Exception):
    """A version that failed to load is not tried again yet."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _loopback_name(host: str) -> bool:
    """Whether a Host header names the loopback interface (127.0.0.1, localhost, [::1]; any port)."""
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1 : name.find("]")] if "]" in name else ""
    else:
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    return name in LOCAL_HOSTS


class _NoStoreNoSniff:
    """Headers on every answer: predictions may hold personal data, so no cache (a proxy's, a browser's) may
    keep one, and no browser may read a JSON answer as HTML. Plain ASGI: no per-request task, as
    BaseHTTPMiddleware would add."""

    HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- request parsing ----------------------------------------------------------------------------------------


def _not_text(value: Any) -> str | None:
    """What makes a string anywhere in ``value`` (decoded JSON) not text: a lone UTF-16 surrogate, or a NUL
    (which PostgreSQL cannot store: one in a batch of the prediction log lost the batch)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a NUL character (\\u0000), which is not text"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape), which is not text"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _one_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: with json.loads's default the last of two wins, so a filter or
    proxy that reads the first one would check other inputs than the model gets."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {_quoted(key)} appears twice in one object")
            seen.add(key)
    return data


def _quoted(text: str, limit: int = 40) -> str:
    """``text`` as an error message quotes it: the start of it (a name from the request may be huge)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


async def read_json(request: Request, max_bytes: int, timeout_s: float) -> Any:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send a JSON body (Content-Type: application/json), not {kind or 'no content type'}",
        )
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise ApiError(413, "payload_too_large", f"the body is over the {max_bytes:,}-byte limit")
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, "payload_too_large", f"the body is over the {max_bytes:,}-byte limit")
            chunks.append(chunk)

    try:  # a client that sends its body slowly, or never, holds a connection: not for ever
        await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:  # the client's doing, not the server's: no 500, no traceback in the log
        raise ApiError(499, "client_closed", "the client went away before sending the whole body") from None
    try:  # JSON over HTTP is UTF-8 (RFC 8259); json.loads would also guess UTF-16 and UTF-32
        body = b"".join(chunks).decode("utf-8").removeprefix("\ufeff")  # a BOM may be ignored (RFC 8259)
    except UnicodeDecodeError as exc:
        why = f"the body is not UTF-8 ({exc.reason} at byte {exc.start})"
        raise ApiError(400, "malformed_json", why) from None
    try:
        data = json.loads(body, parse_constant=_not_json, object_pairs_hook=_one_each)
    except RecursionError:
        raise ApiError(400, "malformed_json", "the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON ({str(exc)[:200]})") from None
    bad = _not_text(data) if _SUSPECT_ESCAPE.search(body) else None
    if bad is not None:
        raise ApiError(400, "malformed_json", f"the body holds {bad}")
    return data


T = TypeVar("T")


async def unless_gone(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """``work``, cancelled if the client hangs up first: its inputs leave the queue with it (a client that
    sends and leaves must not keep the queue full while others get 429)."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        # The body has been read: what the server receives next is the disconnect (after the answer, or
        # when the client goes away before it).
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if not gone:
            raise
        raise ApiError(499, "client_closed", "the client went away before the answer") from None
    finally:
        watcher.cancel()


def parse_predict(data: Any, config: ServeConfig) -> tuple[list[str], Params, str | None]:
    """(inputs, parameters, sticky key) of a predict body, or a 422 naming the first problem."""
    lim = config.limits

    def bad(message: str) -> ApiError:
        return ApiError(422, "validation_error", message)

    if not isinstance(data, dict):
        raise bad('the body must be a JSON object such as {"inputs": ["..."]}')
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise bad(f"unknown field {_quoted(unknown[0])}; expected inputs, parameters and key")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("inputs must be a non-empty list of strings")
    if len(inputs) > lim.max_inputs:
        raise bad(f"{len(inputs)} inputs; at most {lim.max_inputs} per request")
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise bad(f"inputs[{i}] must be a string, not {type(text).__name__}")
        if not text.strip():
            raise bad(f"inputs[{i}] is empty")
        if len(text) > lim.max_input_chars:
            raise bad(f"inputs[{i}] has {len(text):,} characters; at most {lim.max_input_chars:,}")
    params = data.get("parameters", {})
    if not isinstance(params, dict):
        raise bad("parameters must be an object")
    unknown = sorted(set(params) - {"max_new_tokens"})
    if unknown:
        raise bad(f"unknown parameter {_quoted(unknown[0])}; supported: max_new_tokens")
    tokens = params.get("max_new_tokens", lim.default_new_tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= lim.max_new_tokens:
        raise bad(f"parameters.max_new_tokens must be a whole number from 1 to {lim.max_new_tokens}")
    key = data.get("key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 256):
        raise bad("key must be a string of 1 to 256 characters (it keeps a client on one side of a split)")
    return list(inputs), Params(tokens), key


# -- the server -------------------------------------------------------------------------------------------


class Server:
    """State of one serving process: the platform, who it acts as, its routes, metrics and prediction log."""

    def __init__(self, config: ServeConfig, platform: Platform | None = None) -> None:
        self.config = config
        self._own_platform = platform is None
        self.platform = platform or Platform()
        self.ctx: Context = self.platform.context(project=config.project)
        self.metrics = Metrics(multiprocess=config.workers > 1)
        self.routes: dict[str, Route] = {}
        self.ready = False
        self._tokens: dict[str, tuple[Context, float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._orphan_guard: asyncio.Task[None] | None = None
        self._sharer: asyncio.Task[None] | None = None
        self._load_failed: dict[tuple[str, int], float] = {}  # (name, version) -> when to try it again
        # Who this server is in the shared canary window (a worker restarted with the same pid is another).
        self.server_id = f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"
        from modelyard.serving._predlog import PredictionLog

        self.predlog = PredictionLog(self.platform, self.ctx, flush_s=config.logging.flush_s)

    # -- loading -------------------------------------------------------------------------------------------
    async def _load_version(self, name: str, version: int) -> Slot:
        """Load and start a version the registry or a deployment now names. One that failed to load is tried
        again only after LOAD_RETRY_S, not on every poll (each try downloads and verifies every byte)."""
        retry_at = self._load_failed.get((name, version))
        if retry_at is not None and time.monotonic() < retry_at:
            raise _NotYet(f"{name}@{version} failed to load; it is tried again in {LOAD_RETRY_S:g} s")
        try:
            slot = await asyncio.to_thread(self._load, f"{name}@{version}")
        except Exception:
            self._load_failed[(name, version)] = time.monotonic() + LOAD_RETRY_S
            raise
        self._load_failed.pop((name, version), None)
        slot.batcher.start()
        return slot

    def _load(self, spec: str) -> Slot:
        from modelyard.registry import load

        loaded = load(spec, platform=self.platform, ctx=self.ctx, threads=self.config.threads)
        info = loaded.info
        assert info is not None
        slot = Slot(
            info.name,
            info.version,
            info.variant,
            loaded,
            self.config,
            on_batch=self.metrics.batch_observer(info.name, info.version),
        )
        slot.warm()
        return slot

    async def start(self) -> None:
        from modelyard.registry._versions import parse_spec

        for spec in self.config.models:
            name, ref = parse_spec(spec)
            slot = await asyncio.to_thread(self._load, spec)
            route = Route(name, ref if isinstance(ref, str) else None, slot)
            slot.batcher.start()
            self.routes[name] = route
            self.metrics.set_model(route)
            try:  # a candidate that cannot load must not keep the stable version (and scale-out) down
                await self._follow_deployment(route)
            except Exception as exc:
                log.warning("serving %s: no candidate for now: %s", name, exc)
        self.ready = True
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch(), name="yard-watch")
        self._sharer = loop.create_task(self._share(), name="yard-canary-share")
        if self.metrics.multiprocess_dir is not None:  # several workers: the others' scrapes see our queue
            self._publisher = loop.create_task(
                self.metrics.publish(lambda: list(self.routes.values())), name="yard-metrics"
            )
        parent = os.environ.get("YARD_SERVE_PARENT", "")  # set by `yard serve --workers N`
        if self.config.workers > 1 and parent.isdigit():
            self._orphan_guard = loop.create_task(self._guard(int(parent)), name="yard-orphan-guard")

    async def _guard(self, parent: int) -> None:
        """A worker whose `yard serve` died without stopping it (SIGKILL, OOM) stops too, as gunicorn's do:
        an orphan would keep the port and serve a config nobody manages."""
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("serving: the yard serve process %d is gone; this worker stops", parent)
        signal.raise_signal(signal.SIGTERM)  # uvicorn's graceful shutdown: requests in flight are answered

    async def stop(self) -> None:
        self.ready = False
        for task in (self._watcher, self._sharer, self._publisher, self._orphan_guard):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:  # a dead loop must not keep the rest (prediction log) from closing
                    log.warning("serving: %s had stopped: %s", task.get_name(), exc)
        if self._tasks:  # shadow copies, late canary charges, a rolled-back candidate's drain: they log and
            # count what the prediction log and the window must still get, so they finish first (bounded)
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_WAIT_S)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "serving: %d background task(s) did not finish in %g s", len(pending), STOP_WAIT_S
                )
        self.metrics.close()
        for route in self.routes.values():
            for slot in (route.stable, route.candidate):
                if slot is not None:
                    await slot.close()
        self.predlog.close()
        if self._own_platform:
            self.platform.close()

    # -- following the registry: alias moves (blue-green) and deployments ----------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.alias_poll_s)
            for route in list(self.routes.values()):
                # Each on its own: an alias that cannot load must not keep a deployment change (a switch-off)
                # from being applied, nor the reverse.
                for step in (self._record_rollback, self._follow_alias, self._follow_deployment):
                    try:
                        await step(route)
                    except asyncio.CancelledError:
                        raise
                    except _NotYet:  # said when it failed
                        pass
                    except Exception as exc:  # the registry is unreachable: keep serving what is loaded
                        log.warning("serving %s: could not follow the registry: %s", route.name, exc)

    async def _follow_alias(self, route: Route) -> None:
        if route.follow is None:
            return
        from modelyard.registry import show

        info = await asyncio.to_thread(show, self.platform, self.ctx, f"{route.name}@{route.follow}")
        if info.version == route.stable.version:
            return
        if (route.name, info.version) not in self._load_failed:
            log.info("serving %s: %s moved to %s; loading it", route.name, route.follow, info.version)
        new = await self._load_version(route.name, info.version)
        old, route.stable = route.stable, new  # new requests go to the new version from here on
        self.metrics.set_model(route)
        await old.close()  # in-flight requests on the old version finish first

    async def _follow_deployment(self, route: Route) -> None:
        from modelyard.serving._deploy import current

        dep = await asyncio.to_thread(current, self.platform, self.ctx, route.name)
        if dep is None or dep.generation == route.generation:
            return
        if dep.candidate_generation is not None and dep.candidate_generation == route.rolled_back:
            # The candidate this server rolled back: never back in traffic, whether the store does not know
            # yet or this read began before it was told (a record from then, of a newer weight, say).
            return
        old = route.candidate
        if dep.mode == "off" or dep.candidate is None:
            route.candidate_out()
        else:
            if old is None or old.version != dep.candidate:
                try:
                    route.candidate = await self._load_version(route.name, dep.candidate)
                except Exception:
                    if old is not None:  # no longer deployed: out of traffic, whatever its successor does
                        route.candidate_out()
                        self.metrics.set_model(route)
                        await old.close()
                    raise  # the deployment's generation stays unapplied: tried again (see _load_version)
            key = dep.candidate_generation if dep.candidate_generation is not None else dep.generation
            if route.window is None or route.window.key != key:  # a weight or mode change keeps the window
                route.window = SloWindow(self.config.canary, key)
            route.mode, route.weight = dep.mode, dep.weight
        route.generation = dep.generation
        self.metrics.set_model(route)
        if old is not None and old is not route.candidate:
            await old.close()

    async def _rollback(self, route: Route, reason: str) -> None:
        """The candidate breached its SLOs: out of traffic here at once, then in the store (audited)."""
        old, window = route.candidate, route.window
        if old is None or window is None:
            return
        route.candidate_out()
        log.warning("serving %s: candidate %s rolled back: %s", route.name, old.version, reason)
        route.unrecorded, route.rolled_back = (window.key, reason), window.key
        self.metrics.set_model(route)
        # Drained in the background: the request that breached (answer in hand) must not wait for every
        # input queued on the candidate, up to a minute.
        self._spawn(old.close())
        await self._record_rollback(route)

    async def _record_rollback(self, route: Route) -> None:
        """Switch the deployment off in the store for a rollback taken here; on failure it stays pending and
        the watch loop tries again, so that neither the store nor a restarted server puts the candidate back.
        route.generation is left alone: the next poll applies whatever the store then says. Counted where
        the store was switched off (not where another worker or replica got there first)."""
        from modelyard.serving._deploy import rollback_candidate

        if route.unrecorded is None:
            return
        key, reason = route.unrecorded
        try:
            switched = await asyncio.to_thread(
                rollback_candidate, self.platform, self.ctx, route.name, key, reason
            )
        except Exception as exc:  # never the request's failure: the candidate is out of traffic here anyway
            log.warning(
                "serving %s: the rollback could not be recorded yet (%s); retrying every %s s",
                route.name,
                exc,
                self.config.alias_poll_s,
            )
            return
        route.unrecorded = None
        if switched:
            self.metrics.rollbacks.labels(route.name).inc()

    # -- auth ------------------------------------------------------------------------------------------------
    async def authenticate(self, request: Request, model: str) -> Context:
        if not self.config.auth:
            # No tokens, so the loopback address is the only guard, and a web page the user opens can pass it
            # by DNS rebinding: its own name, resolved to 127.0.0.1, makes its requests same-origin to the
            # browser. They name that host in Host, so only loopback names are answered.
            host = request.headers.get("host")
            if host is not None and not _loopback_name(host):
                raise ApiError(
                    421,
                    "misdirected_request",
                    "this server has no API tokens (auth: false) and answers only requests addressed to "
                    "127.0.0.1, localhost or [::1]",
                )
            return self.ctx
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "unauthenticated",
                "send an API token: Authorization: Bearer yard_...",
                {"WWW-Authenticate": "Bearer"},
            )
        token = token.strip()
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._tokens.get(digest)
        # A resolved token is kept auth_cache_s at most (default 1 s; 0: resolved on every request): the
        # longest a revoked token, or a removed or disabled user, still gets answers. Resolving is one indexed
        # query, so the cache only spares the store that query per request under heavy traffic.
        if cached is not None and cached[1] > time.monotonic():
            ctx = cached[0]
        else:
            try:
                ctx = await asyncio.to_thread(self.platform.context, token=token)
            except AuthenticationError as exc:
                raise ApiError(401, "unauthenticated", exc.message, {"WWW-Authenticate": "Bearer"}) from None
            if self.config.auth_cache_s > 0:
                if len(self._tokens) > 10_000:
                    self._tokens.clear()
                self._tokens[digest] = (ctx, time.monotonic() + self.config.auth_cache_s)
        if ctx.project != self.ctx.project:
            raise ApiError(
                403,
                "permission_denied",
                # Not the server's own project: a token of another tenant learns nothing about this one.
                f"the token belongs to project {ctx.project!r}, not to the project this server serves",
            )
        from modelyard.core._rbac import allowed

        if not allowed(ctx.role, "model.predict"):
            raise ApiError(403, "permission_denied", f"{ctx.user} may not use model {_quoted(model)}")
        return ctx

    def route(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            raise ApiError(
                404, "not_found", f"this server does not serve a model {_quoted(name)}; see GET /v1/models"
            )
        return route

    # -- predict ---------------------------------------------------------------------------------------------
    async def _submit(self, slot: Slot, inputs: list[str], params: Params, deadline: float) -> list[str]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return await asyncio.wait_for(slot.batcher.submit(inputs, params), remaining)

    def _charge(self, route: Route, slot: Slot, window: SloWindow | None, ok: bool, ms: float) -> None:
        """One outcome of the candidate ``slot`` in its SLO window."""
        if window is not None:
            window.add(ok, ms)
        if not ok:
            self.metrics.candidate_errors.labels(route.name, str(slot.version)).inc()

    async def predict(
        self, route: Route, inputs: list[str], params: Params, key: str | None
    ) -> tuple[Slot, list[str], str]:
        """(version, answer, role): the answer of the candidate (where the split sends ``key`` there) or of
        the stable version (the role says which: the candidate may be rolled back by this very answer), within
        one deadline of ``limits.timeout_s`` for the whole request. A candidate that fails is charged for it
        only once the stable version has answered the same inputs: input that every version fails on is the
        client's fault, and must not let any client roll a canary back."""
        deadline = time.monotonic() + self.config.limits.timeout_s
        stable_ok: asyncio.Future[bool] | None = None
        if route.candidate is not None and route.mode == "shadow":
            stable_ok = asyncio.get_running_loop().create_future()
            self._spawn(self._shadow(route, route.candidate, inputs, params, stable_ok))
        failed: tuple[Slot, SloWindow, float, Exception] | None = None
        if route.to_candidate(key):
            cand, window = route.candidate, route.window
            assert cand is not None and window is not None
            t0 = time.perf_counter()
            try:
                out = await self._submit(cand, inputs, params, deadline)
            except (Draining, QueueFull):
                pass  # being replaced or full: the stable version answers, nothing is counted against it
            except TimeoutError:  # the request's time is spent: the client gets its 504 now
                ms = (time.perf_counter() - t0) * 1000
                self._spawn(self._charge_if_stable_answers(route, cand, window, inputs, params, ms))
                raise
            except Exception as exc:
                failed = (cand, window, (time.perf_counter() - t0) * 1000, exc)
            else:
                self._charge(route, cand, window, True, (time.perf_counter() - t0) * 1000)
                await self._check_slo(route, window, latency=False)
                return cand, out, "candidate"
        try:
            slot, out = await self._stable(route, inputs, params, deadline)
        except BaseException:
            if stable_ok is not None:
                stable_ok.set_result(False)
            raise
        if stable_ok is not None:
            stable_ok.set_result(True)
        if failed is not None:
            cand, window, ms, why = failed
            log.info(
                "serving %s: candidate %s failed (%s); stable answered",
                route.name,
                cand.version,
                type(why).__name__,
            )
            self._charge(route, cand, window, False, ms)
            await self._check_slo(route, window, latency=False)
        return slot, out, "stable"

    async def _stable(
        self, route: Route, inputs: list[str], params: Params, deadline: float
    ) -> tuple[Slot, list[str]]:
        for attempt in range(2):
            slot = route.stable
            try:
                return slot, await self._submit(slot, inputs, params, deadline)
            except Draining:  # swapped between routing and submitting: the new version answers
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _share(self) -> None:
        """Every ``canary.share_s``: pool this server's candidate outcomes with the other workers' and
        replicas' (share_window) and judge the canary on all of them, p95 included. A failure is logged and
        the loop goes on: it must outlive a store outage or a rollback that could not be recorded."""
        from modelyard.serving._deploy import share_window

        while True:
            await asyncio.sleep(self.config.canary.share_s)
            for route in list(self.routes.values()):
                window = route.window
                if window is None:
                    continue
                try:
                    await share_window(self.platform, self.ctx, route.name, window, self.server_id)
                    await self._check_slo(route, window)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("serving %s: canary check failed: %s", route.name, exc)

    async def _check_slo(self, route: Route, window: SloWindow, *, latency: bool = True) -> None:
        reason = window.breach(latency=latency)
        if reason is not None and route.window is window:
            await self._rollback(route, reason)

    async def _shadow(
        self, route: Route, slot: Slot, inputs: list[str], params: Params, stable_ok: asyncio.Future[bool]
    ) -> None:
        """The candidate answers a copy of the request, never the client; it is charged for a failure only
        where the stable version answered the same inputs."""
        t0 = time.perf_counter()
        window = route.window
        try:
            deadline = time.monotonic() + self.config.limits.timeout_s
            outputs = await self._submit(slot, inputs, params, deadline)
        except (Draining, QueueFull):
            return
        except Exception:  # a timeout too: charged only where the stable version answered in time
            ms = (time.perf_counter() - t0) * 1000
            if await stable_ok:
                self._charge(route, slot, window, False, ms)
            return
        ms = (time.perf_counter() - t0) * 1000
        self._charge(route, slot, window, True, ms)
        if random.random() < self.config.logging.sample:
            self.predlog.add(new_request_id(), route.name, slot.version, "shadow", inputs, outputs, ms)

    async def _charge_if_stable_answers(
        self, route: Route, cand: Slot, window: SloWindow, inputs: list[str], params: Params, ms: float
    ) -> None:
        """A candidate that timed out is charged only if the stable version answers the same inputs within
        the same time limit (run after the client's 504): input that is slow for every version, sent on
        purpose or not, must not roll a canary back."""
        try:
            await self._submit(route.stable, inputs, params, time.monotonic() + self.config.limits.timeout_s)
        except Exception:  # slow (or busy, or being replaced) for the stable version too: not the candidate's
            return
        self._charge(route, cand, window, False, ms)
        await self._check_slo(route, window, latency=False)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# -- the app ----------------------------------------------------------------------------------------------


def create_app(config: ServeConfig, platform: Platform | None = None) -> FastAPI:
    """The ASGI app serving ``config.models``; models load in its lifespan (``/readyz`` says when)."""
    server_box: dict[str, Server] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server = Server(config, platform)
        server_box["server"] = server
        app.state.server = server
        try:
            await server.start()
            yield
        finally:
            await server.stop()

    # No trailing-slash redirects: Starlette builds them from the request's Host header, before any token is
    # checked; a path this API does not have is 404 like any other.
    app = FastAPI(
        title="modelyard serving",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.add_middleware(_NoStoreNoSniff)

    async def read_body(request: Request) -> Any:
        return await read_json(request, config.limits.max_body_bytes, config.limits.read_timeout_s)

    def srv() -> Server:
        server = server_box.get("server")
        if server is None:
            raise ApiError(503, "unavailable", "the server is starting")
        return server

    def answer(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        """Every error answer, counted by its code (a closed set: never a label from the request)."""
        server = server_box.get("server")
        if server is not None:
            with contextlib.suppress(Exception):
                server.metrics.errors.labels(code).inc()
        return _error(status, code, message, headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(YardError)
    async def _yard_error(request: Request, exc: YardError) -> JSONResponse:
        if exc.http_status < 500:
            return answer(exc.http_status, exc.code, exc.message)
        # A backend failure's message names the store (URL, user, host, database, the driver's words): for
        # the log, not the client, who may not even have a token (tokens are resolved in that store).
        log.warning("serving: %s", exc.message)
        if isinstance(exc, BackendError):
            return answer(503, exc.code, "the server cannot reach its storage right now; retry later")
        # Not an outage (a file that fails its digest, a key that does not unwrap): retrying will not help.
        return answer(503, exc.code, f"the server could not answer ({exc.code}); its log says why")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(422, "validation_error", "; ".join(str(e.get("msg")) for e in exc.errors())[:1000])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return answer(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return answer(500, "internal_error", f"unexpected {type(exc).__name__}")

    predict_schema = {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "additionalProperties": False,
                    "properties": {
                        "inputs": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "maxItems": config.limits.max_inputs,
                        },
                        "parameters": {
                            "type": "object",
                            "properties": {"max_new_tokens": {"type": "integer"}},
                        },
                        "key": {
                            "type": "string",
                            "description": "sticky assignment in A/B and canary splits",
                        },
                    },
                }
            }
        },
        "required": True,
    }

    @app.post("/v1/models/{name}:predict", openapi_extra={"requestBody": predict_schema})
    async def predict(name: str, request: Request) -> JSONResponse:
        server = srv()
        t0 = time.perf_counter()
        await server.authenticate(request, name)  # first: without a token, no answer says what is served
        route = server.route(name)
        inputs, params, key = parse_predict(await read_body(request), config)
        rid = new_request_id()
        try:
            slot, outputs, role = await unless_gone(request, server.predict(route, inputs, params, key))
        except QueueFull as exc:
            raise ApiError(
                429, "overloaded", str(exc), {"Retry-After": str(max(1, round(exc.retry_after)))}
            ) from None
        except TimeoutError:
            raise ApiError(504, "timeout", f"no answer within {config.limits.timeout_s:g} s") from None
        except Draining:
            raise ApiError(
                503, "unavailable", "the model is being replaced; retry", {"Retry-After": "1"}
            ) from None
        seconds = time.perf_counter() - t0
        server.metrics.observe_request(name, slot.version, role, seconds)
        if random.random() < config.logging.sample:
            server.predlog.add(rid, name, slot.version, role, inputs, outputs, seconds * 1000)
        return JSONResponse(
            {"model": name, "version": slot.version, "request_id": rid, "outputs": outputs},
            headers={"X-Request-Id": rid, "X-Model-Version": str(slot.version)},
        )

    @app.post("/v1/models/{name}:feedback")
    async def feedback(name: str, request: Request) -> JSONResponse:
        from modelyard.serving._predlog import record_feedback

        server = srv()
        ctx = await server.authenticate(request, name)
        server.route(name)
        data = await read_body(request)
        if not isinstance(data, dict) or not {"request_id", "target"} <= set(data) <= {
            "request_id",
            "index",
            "target",
        }:
            raise ApiError(
                422, "validation_error", 'expected {"request_id": "...", "index": 0, "target": "..."}'
            )
        # The prediction may still be in the buffer; written off the event loop, which a slow or busy store
        # would otherwise hold (and every request with it).
        await asyncio.to_thread(server.predlog.flush)
        # With several workers or replicas, another one may have answered it and still hold it in its buffer;
        # that one stores it within flush_s, so until then a miss is retried (a wait, not a busy thread).
        shared = config.workers > 1 or config.replicated
        patience = config.logging.flush_s + FEEDBACK_GRACE_S if shared else 0.0
        deadline = time.monotonic() + patience
        while True:
            try:
                await asyncio.to_thread(
                    record_feedback,
                    server.platform,
                    ctx,
                    name,
                    data["request_id"],
                    data["target"],
                    index=data.get("index", 0),
                )
            except (UsageError, ValidationError) as exc:
                raise ApiError(422, "validation_error", exc.message) from None
            except NotFoundError as exc:
                if time.monotonic() >= deadline:
                    raise ApiError(404, "not_found", exc.message) from None
                await asyncio.sleep(0.25)
                continue
            except PermissionDeniedError as exc:
                raise ApiError(403, "permission_denied", exc.message) from None
            return JSONResponse({"recorded": True})

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        server = srv()
        await server.authenticate(request, "*")
        return JSONResponse({"models": [r.describe() for r in server.routes.values()]})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        server = server_box.get("server")
        if server is None or not server.ready:
            return _error(503, "unavailable", "models are loading")
        return JSONResponse({"status": "ready"})  # what is served is for GET /v1/models, with a token

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        server = srv()
        if server.config.metrics_auth or not server.config.auth:  # without auth: the Host check alone
            await server.authenticate(request, "*")
        body, content_type = server.metrics.render(server.routes.values())
        return Response(body, media_type=content_type)

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` workers: the config travels as JSON in YARD_SERVE_CONFIG."""
    from modelyard.serving._config import parse_config

    return create_app(parse_config(json.loads(os.environ["YARD_SERVE_CONFIG"]), source="YARD_SERVE_CONFIG"))
