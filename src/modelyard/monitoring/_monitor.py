"""What a served model sees against what it was trained on.

* **Data drift** (:func:`model_drift`): the inputs (and outputs) the server logged in a window against the
  training split of the recipe that trained the version (its sources and targets), column by column with
  the text tests of :func:`modelyard.monitoring.detect_drift` (lengths, token distribution,
  out-of-vocabulary rate).
* **Concept drift** (:func:`quality`): predictions that received feedback in the window, scored with the
  training stage's ``score``, against the version's own evaluation metrics.
* **Serving health** (:func:`serving_stats`): request count and latency percentiles from the log.
"""

from __future__ import annotations

import math
import random
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from modelyard.core._platform import Context, Platform, utcnow
from modelyard.errors import NotFoundError, UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DIGITS = re.compile(r"[0-9]+\Z")


def parse_window(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``7d`` -> a timedelta (at most 366 days)."""
    t = text.strip().lower() if isinstance(text, str) else ""
    # ASCII digits only: str.isdigit also takes '²' (which int() refuses) and other scripts' digits
    digits = t[:-1].lstrip("0")
    shown = f"{text[:20]!r}..." if isinstance(text, str) and len(text) > 20 else repr(text)
    if len(t) < 2 or t[-1] not in _UNITS or not _DIGITS.match(t[:-1]) or not digits:
        raise UsageError(f"window {shown}: expected a number and a unit, such as 30m, 1h or 7d")
    # more than 9 digits is over a year in any unit, and int() refuses over 4,300
    seconds = int(digits) * _UNITS[t[-1]] if len(digits) <= 9 else math.inf
    if seconds > 366 * 86400:
        raise UsageError(f"window {shown} is longer than a year")
    return timedelta(seconds=seconds)


class NoPredictions(NotFoundError):
    """The window holds no prediction of the version: its drift has no data (not a fault)."""


@dataclass
class Reference:
    spec: str  # NAME@V whose training data this is
    data: str  # dataset version(s)
    sources: list[str]
    targets: list[str]
    metrics: dict[str, float]  # the version's evaluation


def reference(platform: Platform, ctx: Context, spec: str, *, max_rows: int = 20_000) -> Reference:
    """The training split (a random ``max_rows`` of it at most) and evaluation metrics of the version
    ``spec`` names."""
    from modelyard.registry import read_manifest
    from modelyard.training._data import load_splits
    from modelyard.training._recipe import recorded_recipe

    info, manifest = read_manifest(platform, ctx, spec)
    recipe = recorded_recipe(platform, manifest, info.spec)
    parent = (manifest.get("lineage") or {}).get("parent")
    if recipe is None and parent:  # an optimised variant: its parent was trained
        return _with_metrics(reference(platform, ctx, parent, max_rows=max_rows), info.metrics, info.spec)
    if recipe is None:
        raise NotFoundError(
            f"{info.spec} records no training recipe, so there is no training data to compare with"
        )
    # As the run read them (blank texts were kept before training refused them): the same seeded split.
    splits = load_splits(platform, ctx, recipe, blank_ok=True)
    rows = splits.train
    if len(rows) > max_rows:  # a seeded random sample: the head of a file sorted by date or label is skewed
        keep = sorted(random.Random(0).sample(range(len(rows)), max_rows))
        rows = [rows[i] for i in keep]
    versions = ", ".join(sorted(set(splits.versions.values())))
    return Reference(
        info.spec, versions, [r.source for r in rows], [r.target for r in rows], dict(info.metrics)
    )


def _with_metrics(ref: Reference, metrics: dict[str, float], spec: str) -> Reference:
    return Reference(spec, ref.data, ref.sources, ref.targets, metrics or ref.metrics)


def model_drift(
    platform: Platform, ctx: Context, spec: str, *, window: timedelta, now: datetime | None = None
) -> tuple[Reference, Any, int]:
    """(reference, drift report of inputs and outputs, predictions compared). NoPredictions (a NotFoundError)
    if the window holds no logged prediction; NotFoundError if the version's training data is not found."""
    from modelyard.registry import show
    from modelyard.serving._predlog import predictions

    info = show(platform, ctx, spec)
    end = now or utcnow()
    # This version's answers only: a canary's or shadow's (another version) would be judged against this
    # version's training data.
    logged = predictions(platform, ctx, info.name, since=end - window, until=end, version=info.version)
    if not logged:
        raise NoPredictions(f"no predictions of {info.spec} were logged in the last {window}; serve it first")
    ref = reference(platform, ctx, info.spec)
    return ref, drift_of_logged(ref, [p.input for p in logged], [p.output for p in logged]), len(logged)


def drift_of_logged(ref: Reference, inputs: list[str], outputs: list[str]) -> Any:
    """Drift of logged inputs and outputs from the reference. The log holds texts with PII replaced
    (<EMAIL>, ...), so the reference is redacted the same way: redaction alone must not read as drift."""
    from modelyard.monitoring._drift import detect_drift
    from modelyard.serving._predlog import redact

    return detect_drift(
        {"input": [redact(t) for t in ref.sources], "output": [redact(t) for t in ref.targets]},
        {"input": inputs, "output": outputs},
        kinds={"input": "text", "output": "text"},
    )


@dataclass
class Quality:
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)

    @property
    def drop(self) -> dict[str, float]:
        """How much lower than at evaluation each metric is (positive: worse now)."""
        return {k: self.reference[k] - v for k, v in self.metrics.items() if k in self.reference}


def quality(
    platform: Platform, ctx: Context, spec: str, *, window: timedelta, now: datetime | None = None
) -> Quality:
    """The version's quality on the window's predictions that got feedback, and its evaluation metrics."""
    from modelyard.registry import show
    from modelyard.serving._predlog import predictions
    from modelyard.training._eval import score
    from modelyard.training._recipe import EVAL_METRICS

    info = show(platform, ctx, spec)
    end = now or utcnow()
    logged = predictions(platform, ctx, info.name, since=end - window, until=end, version=info.version)
    judged = [p for p in logged if p.target]
    result = Quality(len(judged), reference=dict(info.metrics))
    if judged:
        # Every metric a rule may name (quality.rouge2 too), not just those the version was evaluated with.
        result.metrics = dict(
            score([p.output for p in judged], [p.target or "" for p in judged], EVAL_METRICS).overall
        )
    return result


def serving_stats(
    platform: Platform, ctx: Context, name: str, *, window: timedelta, now: datetime | None = None
) -> dict[str, float]:
    from modelyard.evaluation._speed import nearest_rank
    from modelyard.serving._predlog import answered_latencies

    end = now or utcnow()
    count, latest = answered_latencies(platform, ctx, name, since=end - window, until=end)
    if not latest:
        return {"requests": 0.0}
    lat = sorted(latest)  # the newest 100,000 answers: a recent slowdown is not hidden by older traffic
    return {"requests": float(count), "p50_ms": statistics.median(lat), "p95_ms": nearest_rank(lat, 95)}
