"""Server configuration: one closed, validated model (YAML file or flags), limits that keep bad input cheap.
docs/serving.md lists every key with its default (a test keeps that list true). The main ones:

```yaml
models: [support-t5@production]      # NAME@ALIAS (followed: alias moves swap versions blue-green) or NAME@V
host: 127.0.0.1
port: 8000
auth: true                           # false only on 127.0.0.1 / ::1 / localhost
metrics_auth: false                  # true: /metrics needs an API token too (Prometheus: `authorization`)
auth_cache_s: 1.0                    # a revoked token or removed user is answered this long at most
batching: {max_batch_size: 16, max_wait_ms: 0, max_queue: 1024}   # 0: start as soon as the model is free
limits: {max_body_bytes: 1048576, max_inputs: 64, max_input_chars: 4000, max_new_tokens: 256, timeout_s: 30,
         read_timeout_s: 30, max_connections: null}
canary: {max_error_rate: 0.05, max_p95_ms: 5000, window_s: 60, min_requests: 20}
logging: {sample: 1.0}               # share of predictions stored (PII redacted) for drift and feedback
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Batching(_Section):
    max_batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    max_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    enabled: bool = True  # off: every input runs alone (for comparison)

    @model_validator(mode="after")
    def _fits(self) -> Batching:
        if self.max_queue < self.max_batch_size:
            raise ValueError("max_queue must be at least max_batch_size")
        return self


class Limits(_Section):
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20
    max_inputs: Annotated[int, Field(ge=1, le=4096)] = 64
    max_input_chars: Annotated[int, Field(ge=1, le=1_000_000)] = 4000
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 256
    default_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # How long an idle keep-alive connection stays open. Longer than the idle timeout of the clients and
    # load balancers in front (httpx 5 s, cloud load balancers 60 s): with equal timeouts a client can send
    # on a connection in the instant the server closes it, and that request fails (uvicorn's default is 5 s,
    # the same as httpx's, and lost about one request in 2,000 under 200 clients).
    keep_alive_s: Annotated[int, Field(ge=1, le=3600)] = 75
    # A body must arrive within this (408): a client that trickles one, or never sends it, holds a connection.
    # A request's line and headers too (the connection is closed): see serving/_http.py.
    read_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Connections (and requests) a server process holds at once; past it, new ones are answered 503 at once,
    # /healthz included (uvicorn's limit_concurrency): with it set, probe liveness by TCP. Default: no limit.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class Canary(_Section):
    """The SLOs a canary (or A/B candidate) is held to; breaching one rolls it back automatically."""

    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    max_p95_ms: Annotated[float, Field(gt=0)] = 5000.0
    window_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    min_requests: Annotated[int, Field(ge=1)] = 20
    share_s: Annotated[float, Field(gt=0, le=60)] = 1.0  # how often workers and replicas pool their outcomes

    @model_validator(mode="after")
    def _pooled(self) -> Canary:
        # Each server stores a row every share_s and reads the others' rows of the last window_s: with fewer
        # than two rows of each in the window, most of the others' outcomes were outside it.
        if self.share_s > self.window_s / 2:
            raise ValueError("canary.share_s must be at most half of canary.window_s")
        return self


class Logging(_Section):
    sample: Annotated[float, Field(ge=0, le=1)] = 1.0
    flush_s: Annotated[float, Field(gt=0, le=60)] = 1.0


class ServeConfig(_Section):
    models: Annotated[list[str], Field(min_length=1, max_length=16)]
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # Other servers (replicas behind one Service, set by --export k8s) answer this model's predictions too:
    # feedback for one this server has not seen waits for theirs to be stored, as across workers.
    replicated: bool = False
    auth: bool = True
    # /metrics names the models and versions served; off by default so an in-cluster Prometheus can scrape
    # it by annotation, on where the network is not trusted (the scrape job then sends a viewer's token).
    metrics_auth: bool = False
    # How long a resolved API token is reused without asking the store: the bound on how long a revoked
    # token or a removed or disabled user is still answered (0: every request asks).
    auth_cache_s: Annotated[float, Field(ge=0, le=30)] = 1.0
    threads: Annotated[int, Field(ge=1, le=256)] | None = None  # inference threads per model
    alias_poll_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    batching: Batching = Batching()
    limits: Limits = Limits()
    canary: Canary = Canary()
    logging: Logging = Logging()
    project: str | None = None

    @model_validator(mode="after")
    def _safe(self) -> ServeConfig:
        if not self.auth and self.host not in LOCAL_HOSTS:
            raise ValueError(
                f"auth can be off only on a loopback address (127.0.0.1, ::1, localhost), not {self.host!r}"
            )
        if self.metrics_auth and not self.auth:
            raise ValueError("metrics_auth needs auth: without API tokens there is nothing to check")
        if self.batching.max_queue < self.limits.max_inputs:  # a request that large would be 429 for ever
            raise ValueError("batching.max_queue must be at least limits.max_inputs")
        if self.limits.default_new_tokens > self.limits.max_new_tokens:
            raise ValueError("limits.default_new_tokens must not exceed limits.max_new_tokens")
        from modelyard.registry._versions import parse_spec

        names = [parse_spec(m)[0] for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("serve each model name once")
        return self


def parse_config(data: Any, *, source: str = "serve config") -> ServeConfig:
    from modelyard.training._recipe import parse_model

    return parse_model(ServeConfig, data, source=source, kind="serve config")


def load_config(path: str | Path) -> ServeConfig:
    from modelyard.training._recipe import read_yaml

    return parse_config(read_yaml(path, "serve config"), source=str(path))
