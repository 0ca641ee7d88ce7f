"""Settings of a measurement (samples, threads, budgets) are checked before anything is loaded or run."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.core import Platform
from modelyard.errors import UsageError
from modelyard.evaluation import latency_ms, throughput
from modelyard.optimize import optimize, parse_budget
from modelyard.testing import Yard


class _Echo:
    """Anything with generate(): the speed functions take any model."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, sources: list[str], **_: Any) -> list[str]:
        self.calls += 1
        return list(sources)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 0}, "samples"),  # was statistics.StatisticsError after the warm-up ran
        ({"samples": -3}, "samples"),
        ({"warmup": -1}, "warmup"),
        ({"sources": []}, "no sources"),  # was ZeroDivisionError
        ({"samples": True}, "samples"),
    ],
)
def test_latency_refuses_settings_that_measure_nothing(kwargs: dict[str, Any], message: str) -> None:
    model = _Echo()
    args: dict[str, Any] = {"sources": ["a", "b"], "max_new_tokens": 4} | kwargs
    with pytest.raises(UsageError, match=message):
        latency_ms(model, args.pop("sources"), **args)
    assert model.calls == 0
    assert latency_ms(model, ["a"], max_new_tokens=4, samples=5, warmup=0)["samples"] == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch": 0}, "batch"), ({"repeats": 0}, "repeats"), ({"sources": []}, "no sources")],
)
def test_throughput_refuses_settings_that_measure_nothing(kwargs: dict[str, Any], message: str) -> None:
    model = _Echo()
    args: dict[str, Any] = {"sources": ["a"], "max_new_tokens": 4} | kwargs
    with pytest.raises(UsageError, match=message):
        throughput(model, args.pop("sources"), **args)
    assert model.calls == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threads": 100_000}, "threads"),  # one OS thread each, in torch and ONNX Runtime
        ({"threads": 0}, "threads"),
        ({"latency_samples": 0}, "latency_samples"),
        ({"max_samples": 0}, "max_samples"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10**9}, "max_new_tokens"),
    ],
)
def test_optimize_refuses_absurd_measuring_settings_first(
    platform: Platform, kwargs: dict[str, Any], message: str
) -> None:
    # "m@1" does not exist: the settings are refused before the version is looked up.
    with pytest.raises(UsageError, match=message):
        optimize(platform, platform.context(), "m@1", **kwargs)


def test_yard_optimize_refuses_a_thread_count_no_machine_has(yard: Yard) -> None:
    assert yard("init").code == 0
    r = yard("optimize", "m@1", "--threads", "100000")
    assert r.code == 2 and "--threads" in r.err, r.err


def test_a_budget_mapping_takes_any_finite_number() -> None:
    # '-1e-05' (how Python writes a small float) was "not METRIC=DELTA"
    assert parse_budget({"rougeL": -1e-05, "bleu": 0, "rouge1": -1e-20}) == {
        "rougeL": -1e-05,
        "bleu": 0.0,
        "rouge1": -1e-20,
    }
    for bad in (float("nan"), float("-inf"), True, "x"):
        with pytest.raises(UsageError, match="rougeL"):
            parse_budget({"rougeL": bad})  # type: ignore[dict-item]
