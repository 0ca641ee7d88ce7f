"""Model slots (a loaded version behind its own batcher) and routes (a model's stable slot plus an optional
candidate for A/B, canary or shadow traffic, with the canary's SLO window).

Swaps are blue-green: a new slot is loaded and warmed before it is put in place, the old one drains (every
input already queued is answered) and only then is closed. Routing reads the current slot and submits to it
without yielding in between, so a request can never reach a slot that has started to drain.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from modelyard.serving._batcher import Batcher, OnBatch
from modelyard.serving._config import Canary, ServeConfig


@dataclass(frozen=True)
class Shared:
    """Candidate outcomes as servers share them: when, how many requests, how many failed, and the
    latencies (ms) of those that succeeded (a sample when there were many)."""

    at: float  # wall-clock seconds
    requests: int
    errors: int
    latencies: list[float]


@dataclass(frozen=True)
class Params:
    """Generation parameters of a request: inputs batch together only when these are equal."""

    max_new_tokens: int


class Slot:
    def __init__(
        self,
        name: str,
        version: int,
        variant: str,
        model: Any,
        config: ServeConfig,
        on_batch: OnBatch | None = None,
    ) -> None:
        self.name, self.version, self.variant, self.model = name, version, variant, model
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"yard-{name}-{version}")
        b = config.batching
        self.batcher = Batcher(
            self._run,
            executor=self.executor,
            max_batch_size=b.max_batch_size if b.enabled else 1,
            max_wait_ms=b.max_wait_ms if b.enabled else 0.0,
            max_queue=b.max_queue,
            on_batch=on_batch,
        )

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    def _run(self, texts: list[str], params: Params) -> list[str]:
        out: list[str] = self.model.generate(
            texts, max_new_tokens=params.max_new_tokens, batch_size=len(texts)
        )
        return out

    def warm(self) -> None:
        """One real generation before traffic arrives (sessions, allocators and caches initialised)."""
        self._run(["warm up"], Params(4))

    async def close(self) -> None:
        await self.batcher.drain()
        self.executor.shutdown(wait=False)


class SloWindow:
    """A candidate's recent outcomes, judged against its SLOs: this server's own requests (time, ok, latency
    ms) plus the rows other servers of the model shared through the metadata store (see
    ``serving._deploy.share_outcomes``), so that N workers or replicas breach after ``min_requests`` in all,
    not N times as many. Times are wall-clock: they are compared across processes and hosts."""

    def __init__(self, slo: Canary, generation: int) -> None:
        self.slo = slo
        self.generation = generation  # of the deployment this candidate belongs to: the shared rows' key
        self._events: deque[tuple[float, bool, float]] = deque()
        self._unshared = 0  # the newest events not handed to take_unshared() yet
        self._others: list[Shared] = []

    def add(self, ok: bool, latency_ms: float) -> None:
        self._events.append((time.time(), ok, latency_ms))
        self._unshared += 1

    def take_unshared(self) -> Shared:
        """This server's outcomes since the last call, to share: (now, requests, errors, ok latencies)."""
        n = min(self._unshared, len(self._events))
        self._unshared = 0
        new = list(itertools.islice(self._events, len(self._events) - n, None))
        return Shared(time.time(), n, sum(1 for _, ok, _ in new if not ok), [ms for _, ok, ms in new if ok])

    def untake(self, shared: Shared) -> None:
        """Sharing failed: offer these outcomes again next time (those still in the window)."""
        self._unshared += shared.requests

    def set_others(self, rows: list[Shared]) -> None:
        self._others = rows

    def _current(self) -> tuple[int, int, list[float]]:
        cutoff = time.time() - self.slo.window_s
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()
        others = [r for r in self._others if r.at >= cutoff]
        n = len(self._events) + sum(r.requests for r in others)
        errors = sum(1 for _, ok, _ in self._events if not ok) + sum(r.errors for r in others)
        latencies = [ms for _, ok, ms in self._events if ok]
        for r in others:
            latencies += r.latencies
        return n, errors, latencies

    def breach(self) -> str | None:
        """Why the candidate breaks its SLOs over the window, or None (also while too few requests)."""
        n, errors, latencies = self._current()
        if n < self.slo.min_requests:
            return None
        if errors / n > self.slo.max_error_rate:
            return f"error rate {errors / n:.1%} over {n} requests > {self.slo.max_error_rate:.1%}"
        if len(latencies) >= self.slo.min_requests:
            latencies.sort()
            p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
            if p95 > self.slo.max_p95_ms:
                return (
                    f"p95 latency {p95:.0f} ms over {len(latencies)} requests > {self.slo.max_p95_ms:.0f} ms"
                )
        return None


class Route:
    """One served model: ``follow`` is the alias whose moves it follows (None for a pinned version)."""

    def __init__(self, name: str, follow: str | None, stable: Slot) -> None:
        self.name, self.follow, self.stable = name, follow, stable
        self.candidate: Slot | None = None
        self.mode = "off"
        self.weight = 0
        self.generation = 0
        self.window: SloWindow | None = None

    def to_candidate(self, key: str | None) -> bool:
        """Whether this request goes to the candidate (ab, canary). With a key, the same key always lands on
        the same side (sticky); without one the split is random."""
        if self.candidate is None or self.mode not in ("ab", "canary") or self.weight <= 0:
            return False
        if key is None:
            return random.random() * 100 < self.weight
        bucket = int.from_bytes(hashlib.sha256(f"{self.name}\x00{key}".encode()).digest()[:4], "big") % 100
        return bucket < self.weight

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "alias": self.follow,
            "version": self.stable.version,
            "variant": self.stable.variant,
        }
        if self.candidate is not None:
            out["candidate"] = {
                "version": self.candidate.version,
                "variant": self.candidate.variant,
                "mode": self.mode,
                "weight": self.weight,
            }
        return out
