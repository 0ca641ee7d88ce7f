"""The gate policy: one YAML file (``examples/flan-t5/gates.yaml``), validated like a recipe (closed,
strict sections; one error listing every problem; YAML 1.2 floats; safe loader).

```yaml
data: {dataset: normalise@1, file: test.jsonl, group_field: locale, max_samples: 200}
decoding: {max_new_tokens: 48}
metrics:                      # absolute, or relative to the version an alias points at
  - rougeL >= 0.6
  - exact_match >= production - 0.01
fairness:
  - {metric: rougeL, group: locale, max_gap: 0.15, min: 0.5}
robustness: {metric: rougeL, perturbations: [typos, casing, whitespace, punctuation, numbers], min_ratio: 0.9}
latency: {p95_ms: 200, samples: 50}
size: {max_mb: 500}
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from modelyard.evaluation._perturb import PERTURBATIONS
from modelyard.training._recipe import (
    DatasetSpec,
    EvalMetric,
    FieldName,
    MemberPath,
    PositiveInt,
    parse_model,
    read_yaml,
)

# In an alias a '-' is followed by a letter: 'staging-1' is staging minus 1, as 'production-0.01' is.
_CHECK_RE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<alias>[a-z][a-z0-9_]*(?:-[a-z][a-z0-9_]*)*)\s*(?:(?P<sign>[+-])\s*(?P<offset>\d+(?:\.\d+)?))?"
    r"|(?P<number>-?\d+(?:\.\d+)?))\s*$"
)
#: read as numbers by people and by YAML, never as an alias
_NOT_ALIASES = frozenset({"nan", "inf", "infinity"})
METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "exact_match", "gen_len")


PerturbationName = Literal["typos", "casing", "whitespace", "punctuation", "numbers"]
_ALL_PERTURBATIONS: tuple[PerturbationName, ...] = ("typos", "casing", "whitespace", "punctuation", "numbers")
assert set(_ALL_PERTURBATIONS) == set(PERTURBATIONS)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class MetricCheck(_Section):
    """``metric op bound``: bound is a number, or ``alias [+-] offset`` (the alias's version, evaluated on
    the same data)."""

    text: str
    metric: EvalMetric
    op: Literal[">=", "<=", ">", "<"]
    bound: float | None = None
    alias: str | None = None
    offset: float = 0.0


def _parse_check(text: str) -> MetricCheck:
    m = _CHECK_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"{text!r} is not a metric check; expected 'METRIC OP NUMBER' or 'METRIC OP ALIAS - NUMBER', "
            "such as 'rougeL >= 0.6' or 'rougeL >= production - 0.01'"
        )
    if m["metric"] not in METRICS:
        raise ValueError(f"{text!r}: unknown metric {m['metric']!r}; expected one of {', '.join(METRICS)}")
    fields: dict[str, Any] = {"text": text.strip(), "metric": m["metric"], "op": m["op"]}
    if m["number"] is not None:
        return MetricCheck.model_validate({**fields, "bound": float(m["number"])})
    if len(m["alias"]) > 64:
        raise ValueError(f"{text!r} is not a metric check: an alias has at most 64 characters")
    if m["alias"] in _NOT_ALIASES:
        raise ValueError(f"{text!r}: {m['alias']!r} is not a bound; give a finite number or an alias")
    offset = float(m["offset"] or 0.0) * (-1 if m["sign"] == "-" else 1)
    return MetricCheck.model_validate({**fields, "alias": m["alias"], "offset": offset})


CheckText = Annotated[str, AfterValidator(lambda v: _parse_check(v).text)]


class EvalData(_Section):
    """The evaluation set: a member of a dataset version (``file``, or the one named after ``split``, or the
    only table when the model's run cut it by ratios: then its ``split`` of it, as the run cut it)."""

    dataset: DatasetSpec
    file: MemberPath | None = None
    split: Literal["train", "validation", "test"] = "test"
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    source_field: FieldName = "source"
    target_field: FieldName = "target"
    group_field: FieldName | None = None
    max_samples: Annotated[int, Field(ge=1, le=100_000)] = 200
    seed: int = 0

    @model_validator(mode="after")
    def _distinct_fields(self) -> EvalData:
        # One column as two roles scores the model against its own input or slices by the answer: refused
        # here rather than after minutes of evaluation.
        if self.source_field == self.target_field:
            raise ValueError(
                f"source_field and target_field are both {self.source_field!r}; name two columns"
            )
        if self.group_field in (self.source_field, self.target_field):
            raise ValueError(f"group_field {self.group_field!r} is the source or target column; name another")
        return self


class Decoding(_Section):
    max_new_tokens: Annotated[int, Field(ge=1, le=1024)] = 64
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 32


class Fairness(_Section):
    metric: EvalMetric = "rougeL"
    group: FieldName | None = None  # default: data.group_field
    max_gap: Annotated[float, Field(ge=0)] | None = None
    min: float | None = None
    min_examples: PositiveInt = 5  # smaller slices are reported but not judged

    @model_validator(mode="after")
    def _some_bound(self) -> Fairness:
        if self.max_gap is None and self.min is None:
            raise ValueError("a fairness check needs max_gap, min or both")
        return self


class Robustness(_Section):
    metric: EvalMetric = "rougeL"
    perturbations: list[PerturbationName] = Field(
        default_factory=lambda: list(_ALL_PERTURBATIONS), min_length=1
    )
    min_ratio: Annotated[float, Field(gt=0, le=2)] = 0.9
    seed: int = 0


class Latency(_Section):
    p95_ms: Annotated[float, Field(gt=0)]
    samples: Annotated[int, Field(ge=5, le=10_000)] = 50
    warmup: Annotated[int, Field(ge=0, le=100)] = 3
    threads: Annotated[int, Field(ge=1, le=256)] | None = None


class Size(_Section):
    max_mb: Annotated[float, Field(gt=0)]


class GatePolicy(_Section):
    data: EvalData
    decoding: Decoding = Decoding()
    metrics: list[CheckText] = Field(default_factory=list)
    fairness: list[Fairness] = Field(default_factory=list)
    robustness: Robustness | None = None
    latency: Latency | None = None
    size: Size | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GatePolicy:
        if not (self.metrics or self.fairness or self.robustness or self.latency or self.size):
            raise ValueError("the policy checks nothing: give metrics, fairness, robustness, latency or size")
        for f in self.fairness:
            if (f.group or self.data.group_field) is None:
                raise ValueError("fairness needs a group column: set fairness[].group or data.group_field")
            if f.group in (self.data.source_field, self.data.target_field):
                raise ValueError(
                    f"fairness[].group {f.group!r} is the source or target column; name a column to slice by"
                )
        return self

    @property
    def checks(self) -> list[MetricCheck]:
        return [_parse_check(t) for t in self.metrics]

    def needed_metrics(self) -> list[str]:
        names = {c.metric for c in self.checks} | {f.metric for f in self.fairness}
        if self.robustness is not None:
            names.add(self.robustness.metric)
        return [m for m in METRICS if m in names]


def parse_policy(data: Any, *, source: str = "policy") -> GatePolicy:
    return parse_model(GatePolicy, data, source=source, kind="gate policy")


def load_policy(path: str | Path) -> GatePolicy:
    return parse_policy(read_yaml(path, "gate policy"), source=str(path))
