"""Prometheus metrics of one serving process (its own registry, so several apps in one process never mix).

``yard_requests_total`` and ``yard_request_seconds`` by model, version and route (stable or candidate),
``yard_batch_size`` by model and version, ``yard_queue_depth`` (inputs waiting or running, read at scrape
time), ``yard_errors_total`` by error code, ``yard_candidate_errors_total``, ``yard_canary_rollbacks_total``
and ``yard_model_info`` naming the versions each route serves.

With several workers (``yard serve --workers N``) a scrape reaches one worker, so each worker's registry
alone would report only its share. There prometheus_client's multiprocess mode is used, its standard
answer: the parent creates a private PROMETHEUS_MULTIPROC_DIR before the workers start (and removes it on
exit), every worker's values live in memory-mapped files there, and ``/metrics`` merges them with a
MultiProcessCollector. Counters and histograms are summed over every worker that ever ran (a restarted
worker's counts are kept); ``yard_queue_depth`` is the sum over live workers (each refreshes its own share
every second) and ``yard_model_info`` lists what any live worker serves.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from modelyard.serving._routing import Route

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")
REFRESH_S = 1.0  # how often a worker publishes its queue depth for the others' scrapes


def multiprocess_dir(wanted: bool) -> str | None:
    """The directory prometheus_client shares values through, when ``wanted`` and it is in multiprocess mode
    (PROMETHEUS_MULTIPROC_DIR was set before it was imported: values live in files, not in memory)."""
    if not wanted:
        return None
    from prometheus_client import values

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or values.ValueClass is values.MutexValue or not os.path.isdir(path):
        return None
    return path


class Metrics:
    def __init__(self, *, multiprocess: bool = False) -> None:
        """``multiprocess``: this process is one of several workers of a server (see the module doc)."""
        self.multiprocess_dir = multiprocess_dir(multiprocess)
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
        self.queue = Gauge(
            "yard_queue_depth",
            "Inputs waiting or running.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
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
        self.info = Gauge(
            "yard_model_info",
            "Versions served (1) by route.",
            ["model", "version", "variant", "route"],
            registry=r,
            multiprocess_mode="livemax",
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
                _drop(self.info, labels)
        self.info.labels(route.name, str(route.stable.version), route.stable.variant, "stable").set(1)
        if route.candidate is not None:
            self.info.labels(
                route.name, str(route.candidate.version), route.candidate.variant, route.mode
            ).set(1)

    def set_queue(self, routes: Iterable[Route]) -> None:
        """Publish each served version's queue depth (versions no longer served drop out)."""
        depths = {
            (route.name, str(slot.version)): slot.batcher.depth
            for route in routes
            for slot in (route.stable, route.candidate)
            if slot is not None
        }
        for labels in list(self.queue._metrics):
            if labels not in depths:
                _drop(self.queue, labels)
        for labels, depth in depths.items():
            self.queue.labels(*labels).set(depth)

    async def publish(self, routes: Callable[[], Iterable[Route]]) -> None:
        """With several workers: keep this worker's queue depth fresh for scrapes other workers answer."""
        while True:
            self.set_queue(routes())
            await asyncio.sleep(REFRESH_S)

    def render(self, routes: Iterable[Route]) -> tuple[bytes, str]:
        self.set_queue(routes)
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        return generate_latest(_Merged(self.multiprocess_dir)), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """This worker stops: its live gauges (queue depth, versions served) leave the merged view."""
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


def _drop(gauge: Gauge, labels: Sequence[str]) -> None:
    """Zero a child and forget it: Gauge.remove() without its warning. Zeroed first because with several
    workers its shared file keeps the last value (the merge leaves zeros out). remove() warns "Removal of
    labels has not been implemented" whenever PROMETHEUS_MULTIPROC_DIR is set, which is expected here and,
    printed on every worker's start, read as a fault. Silencing it took a process-wide filter (hiding the
    message from any other code); warnings.catch_warnings is not thread-safe before Python 3.14, and model
    threads run beside this. So the child is dropped as remove() drops it, under the metric's lock."""
    gauge.labels(*labels).set(0)
    with gauge._lock:
        gauge._metrics.pop(labels, None)


class _Merged:
    """Every worker's values merged (a registry-like collector for ``generate_latest``). Live gauges of a
    worker that died without stopping (killed, then restarted by uvicorn) are dropped; a version no worker
    serves any more (its info is 0 everywhere) is left out, as one process leaves out a removed child."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        from prometheus_client import multiprocess

        for name in os.listdir(self.path):
            match = _LIVE_FILE.fullmatch(name)
            if match is not None and not _alive(int(match.group(1))):
                multiprocess.mark_process_dead(int(match.group(1)), self.path)  # type: ignore[no-untyped-call]
        collector = multiprocess.MultiProcessCollector(None, self.path)  # type: ignore[no-untyped-call]
        for attempt in range(3):
            try:
                families: list[Metric] = list(collector.collect())  # type: ignore[no-untyped-call]
                break
            except FileNotFoundError:  # a stopping worker removed its file between listing and reading
                if attempt == 2:
                    raise
        served: set[tuple[str, str]] = set()
        for family in families:
            if family.name == "yard_model_info":
                family.samples = [s for s in family.samples if s.value > 0]
                served |= {(s.labels["model"], s.labels["version"]) for s in family.samples}
        for family in families:
            if family.name == "yard_queue_depth":
                family.samples = [
                    s for s in family.samples if (s.labels["model"], s.labels["version"]) in served
                ]
        return families


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by uvicorn) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc here: it answered the signal, so it is alive
        return True
