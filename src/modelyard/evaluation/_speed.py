"""CPU speed of a loaded model, measured the same way wherever it is reported (gates, optimisation).

* latency: single requests (batch 1) over a fixed input set, after a warm-up; p50 and p95 in ms. p95 is
  the nearest-rank percentile of the sorted timings.
* throughput: sequences per second generating ``batch`` requests at once, best of ``repeats`` (the least
  disturbed by other work on the machine).

``model`` is anything with ``generate(sources, max_new_tokens=..., batch_size=...)``: a registry
``LoadedModel`` (PyTorch or ONNX Runtime).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from modelyard.errors import UsageError


def _check(sources: Sequence[str], **counts: tuple[int, int]) -> None:
    """Refuse settings that measure nothing (no sources, no timed run) before the model runs once: they
    ended in a ZeroDivisionError or StatisticsError after the warm-up."""
    if len(sources) == 0:
        raise UsageError("no sources to time; give at least one input text")
    for name, (value, least) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(f"{name} must be a whole number of at least {least}, got {value!r}")


def nearest_rank(ascending: Sequence[float], p: float) -> float:
    """The smallest value with at least ``p`` percent of the values at or below it (nearest rank)."""
    return ascending[min(len(ascending), max(1, math.ceil(p / 100 * len(ascending)))) - 1]


def latency_ms(
    model: Any, sources: Sequence[str], *, max_new_tokens: int, samples: int = 50, warmup: int = 3
) -> dict[str, float]:
    _check(sources, samples=(samples, 1), warmup=(warmup, 0))
    picked = [sources[i % len(sources)] for i in range(samples)]
    for s in picked[:warmup]:
        model.generate([s], max_new_tokens=max_new_tokens, batch_size=1)
    times = []
    for s in picked:
        t0 = time.perf_counter()
        model.generate([s], max_new_tokens=max_new_tokens, batch_size=1)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": nearest_rank(times, 95),
        "samples": float(len(times)),
    }


def throughput(
    model: Any, sources: Sequence[str], *, max_new_tokens: int, batch: int = 16, repeats: int = 3
) -> float:
    _check(sources, batch=(batch, 1), repeats=(repeats, 1))
    picked = [sources[i % len(sources)] for i in range(batch)]
    model.generate(picked, max_new_tokens=max_new_tokens, batch_size=batch)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(picked, max_new_tokens=max_new_tokens, batch_size=batch)
        best = min(best, time.perf_counter() - t0)
    return batch / best
