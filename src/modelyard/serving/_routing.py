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
    """Candidate outcomes as servers share them: how many requests, how many failed, and the latencies (ms)
    of those that succeeded (a sample when there were many)."""

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
    """A candidate's recent outcomes, judged against its SLOs: this server's own requests plus the rows the
    other servers of the model shared through the metadata store (``serving._deploy.share_window``), so
    that N workers or replicas breach after ``min_requests`` in all, not N times as many.

    Own outcomes are kept with the monotonic clock and counted as they come, so the request path checks
    the error rate in constant time; the p95 needs a sort and is checked by the share loop (every
    ``share_s``). The others' rows are selected by the store's clock when fetched and replace the last
    fetch. A sampled row weighs each of its latencies as the successes it stands for."""

    def __init__(self, slo: Canary, key: int) -> None:
        self.slo = slo
        self.key = key  # the deployment generation that put this candidate in: the shared rows' key
        self.warned = False  # about malformed shared rows, once per window
        self._events: deque[tuple[float, bool, float]] = deque()  # (monotonic time, ok, latency ms)
        self._errors = 0  # failures among _events
        self._unshared = 0  # the newest events not taken by take_unshared() yet
        self._others: list[Shared] = []
        self._other_requests = 0
        self._other_errors = 0

    def add(self, ok: bool, latency_ms: float) -> None:
        self._events.append((time.monotonic(), ok, latency_ms))
        self._errors += not ok
        self._unshared += 1

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.slo.window_s
        while self._events and self._events[0][0] < cutoff:
            self._errors -= not self._events.popleft()[1]
        self._unshared = min(self._unshared, len(self._events))

    def take_unshared(self) -> Shared:
        """This server's outcomes since the last call, to share."""
        self._prune()
        n, self._unshared = self._unshared, 0
        new = list(itertools.islice(self._events, len(self._events) - n, None))
        return Shared(n, sum(1 for _, ok, _ in new if not ok), [ms for _, ok, ms in new if ok])

    def untake(self, shared: Shared) -> None:
        """Storing them failed: offer these outcomes again next time (those still in the window)."""
        self._unshared += shared.requests
        self._prune()

    def set_others(self, rows: list[Shared]) -> None:
        self._others = rows
        self._other_requests = sum(r.requests for r in rows)
        self._other_errors = sum(r.errors for r in rows)

    def breach(self, *, latency: bool = True) -> str | None:
        """Why the candidate breaks its SLOs over the window, or None (also while too few requests).
        ``latency=False``: the error rate only (the request path)."""
        self._prune()
        n = len(self._events) + self._other_requests
        if n < self.slo.min_requests:
            return None
        errors = self._errors + self._other_errors
        if errors / n > self.slo.max_error_rate:
            return f"error rate {errors / n:.1%} over {n} requests > {self.slo.max_error_rate:.1%}"
        if not latency:
            return None
        weighted = [(ms, 1.0) for _, ok, ms in self._events if ok]
        for r in self._others:
            if r.latencies:
                weight = (r.requests - r.errors) / len(r.latencies)
                weighted += [(ms, weight) for ms in r.latencies]
        total = sum(w for _, w in weighted)
        if total < self.slo.min_requests:
            return None
        weighted.sort()
        seen, p95 = 0.0, weighted[-1][0]
        for ms, w in weighted:  # the smallest latency with 95% of the weight at or below it
            seen += w
            if seen >= 0.95 * total - 1e-9:
                p95 = ms
                break
        if p95 > self.slo.max_p95_ms:
            return f"p95 latency {p95:.0f} ms over {round(total)} requests > {self.slo.max_p95_ms:.0f} ms"
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
        # A rollback taken here that the store has not recorded yet: (window key, reason), retried.
        self.unrecorded: tuple[int, str] | None = None
        # The window key (candidate generation) of the last candidate rolled back here: never back in traffic.
        self.rolled_back: int | None = None

    def candidate_out(self) -> None:
        """No candidate in traffic (the slot, if any, is closed by the caller)."""
        self.candidate, self.mode, self.weight, self.window = None, "off", 0, None

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
