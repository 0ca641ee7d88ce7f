"""Prometheus metrics of one serving process (its own registry, so several apps in one process never mix).

``yard_requests_total`` and ``yard_request_seconds`` by model, version and route (stable or candidate),
``yard_batch_size`` by model and version, ``yard_queue_depth`` (inputs waiting or running, read at scrape
time), ``yard_errors_total`` by error code, ``yard_candidate_errors_total``, ``yard_canary_rollbacks_total``
and ``yard_model_info`` naming the versions each route serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from modelyard.serving._routing import Route

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "yard_requests_total", "Answered predict requests.", ["model", "version", "route"], registry=r
        )
        self.latency = Histogram(
            "yard_request_seconds",
            "Predict latency, request to response.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch = Histogram(
            "yard_batch_size", "Inputs per model batch.", ["model", "version"], buckets=_BATCH, registry=r
        )
        self.queue = Gauge("yard_queue_depth", "Inputs waiting or running.", ["model", "version"], registry=r)
        self.errors = Counter(
            "yard_errors_total", "Requests answered with an error, by code.", ["code"], registry=r
        )
        self.candidate_errors = Counter(
            "yard_candidate_errors_total",
            "Candidate failures (the stable version answered).",
            ["model", "version"],
            registry=r,
        )
        self.rollbacks = Counter(
            "yard_canary_rollbacks_total", "Automatic candidate rollbacks.", ["model"], registry=r
        )
        self._info_labels: dict[str, list[tuple[str, str, str, str]]] = {}
        self.info = Gauge(
            "yard_model_info",
            "Versions served (1) by route.",
            ["model", "version", "variant", "route"],
            registry=r,
        )

    def batch_observer(self, model: str, version: int) -> Callable[[int, float], None]:
        hist = self.batch.labels(model, str(version))

        def observe(size: int, seconds: float) -> None:
            hist.observe(size)

        return observe

    def observe_request(self, model: str, version: int, route: str, seconds: float) -> None:
        self.requests.labels(model, str(version), route).inc()
        self.latency.labels(model).observe(seconds)

    def set_model(self, route: Route) -> None:
        for labels in list(self.info._metrics):  # what this route served before
            if labels[0] == route.name:
                self.info.remove(*labels)
        self.info.labels(route.name, str(route.stable.version), route.stable.variant, "stable").set(1)
        if route.candidate is not None:
            self.info.labels(
                route.name, str(route.candidate.version), route.candidate.variant, route.mode
            ).set(1)

    def render(self, routes: Iterable[Route]) -> tuple[bytes, str]:
        self.queue.clear()
        for route in routes:
            for slot in (route.stable, route.candidate):
                if slot is not None:
                    self.queue.labels(route.name, str(slot.version)).set(slot.batcher.depth)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
