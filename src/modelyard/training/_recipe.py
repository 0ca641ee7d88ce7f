"""The training recipe: one YAML file, validated by pydantic before any work starts.

Every section is a frozen pydantic model with ``extra="forbid"`` and strict types, so an unknown key (at any
depth), a string where a number belongs, or a value out of range is an error that names the key. Pydantic's
errors are turned into one :class:`modelyard.errors.ValidationError` listing every problem as
``key.path: message``. This module imports no torch and no transformers.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from modelyard.config import check_name
from modelyard.errors import NotFoundError, UsageError, ValidationError

if TYPE_CHECKING:
    from modelyard.core import Context, Platform
    from modelyard.data import VersionInfo

# -- scalar types ------------------------------------------------------------------------------------------

_SPEC_RE = re.compile(r"^(?P<name>[^@]+)@(?P<version>[^@]*)\Z")


def _check_spec(value: str) -> str:
    """``NAME@N`` with a valid dataset name and a version 1, 2, 3, ... (the rule of modelyard.data)."""
    m = _SPEC_RE.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a dataset version; expected NAME@VERSION such as reviews@3")
    check_name(m["name"], "dataset")
    raw = m["version"]
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1 or len(raw) > 9:
        raise ValueError(f"{value!r} has an invalid version {raw!r}; versions are 1, 2, 3, ...")
    return value


def _check_member(value: str) -> str:
    """A member path inside a dataset version: relative, forward slashes, no way out of the version."""
    bad = (
        not value
        or value.startswith("/")
        or "\\" in value
        or "\x00" in value
        or "%" in value
        or "#" in value
        or any(part in ("", ".", "..") for part in value.split("/"))
    )
    if bad:
        raise ValueError(f"{value!r} is not a member path; expected a relative path such as train.jsonl")
    return value


def _check_field_name(value: str) -> str:
    if not value or not value.strip():
        raise ValueError("must not be empty")
    return value


DatasetSpec = Annotated[str, AfterValidator(_check_spec)]
MemberPath = Annotated[str, AfterValidator(_check_member)]
FieldName = Annotated[str, AfterValidator(_check_field_name)]
Ratio = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]
#: the longest source or target, in tokens, a recipe may ask for (also the most tokens generated)
MAX_SEQUENCE_LENGTH = 1_000_000
#: the most beams a beam search may keep (each is a copy of the decoder state)
MAX_BEAMS = 256
#: the largest scratch model a recipe may ask for, in parameters (flan-t5-xxl has 11.1e9, flan-ul2 19.5e9)
MAX_SCRATCH_PARAMETERS = 30_000_000_000
Beams = Annotated[int, Field(ge=1, le=MAX_BEAMS)]
NewTokens = Annotated[int, Field(ge=1, le=MAX_SEQUENCE_LENGTH)]
#: the largest recipe, gate policy or alert rules file read (as a job's recipe is bounded)
MAX_YAML_BYTES = 1 << 20

EVAL_METRICS: tuple[str, ...] = ("bleu", "rouge1", "rouge2", "rougeL", "exact_match", "gen_len")
#: metrics where lower is better; everything else is maximised.
_LOWER_IS_BETTER = frozenset({"loss"})
EvalMetric = Literal["bleu", "rouge1", "rouge2", "rougeL", "exact_match", "gen_len"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# -- 1. data ----------------------------------------------------------------------------------------------


class SplitRatios(_Section):
    train: Ratio
    validation: Ratio = 0.0
    test: Ratio = 0.0

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"ratios must sum to 1 (train + validation + test = {total:g})")
        if self.train <= 0:
            raise ValueError("the train ratio must be greater than 0")
        return self


class DataSection(_Section):
    """One version per split (``train``/``validation``/``test``), or one ``dataset`` cut by ``split``."""

    train: DatasetSpec | None = None
    validation: DatasetSpec | None = None
    test: DatasetSpec | None = None
    dataset: DatasetSpec | None = None
    split: SplitRatios | None = None
    seed: int = 0
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    file: MemberPath | None = None
    source_field: FieldName = "source"
    target_field: FieldName = "target"
    group_field: FieldName | None = None

    @model_validator(mode="after")
    def _one_layout(self) -> DataSection:
        per_split = [k for k in ("train", "validation", "test") if getattr(self, k) is not None]
        if self.dataset is not None:
            if per_split:
                raise ValueError(
                    f"give either dataset (with split ratios) or train/validation/test, not both "
                    f"(found dataset and {', '.join(per_split)})"
                )
        else:
            if self.split is not None:
                raise ValueError("split ratios need dataset: NAME@VERSION")
            if self.train is None:
                raise ValueError("needs train: NAME@VERSION (or dataset: NAME@VERSION with split ratios)")
        if len({self.source_field, self.target_field, self.group_field} - {None}) < (
            3 if self.group_field is not None else 2
        ):
            raise ValueError("source_field, target_field and group_field must be different columns")
        return self

    @property
    def ratios(self) -> SplitRatios:
        """The split ratios in effect (0.8/0.1/0.1 when ``dataset`` is given without ``split``)."""
        return self.split or SplitRatios(train=0.8, validation=0.1, test=0.1)

    def versions(self) -> dict[str, str]:
        """Role -> version spec of every dataset version the recipe reads (for lineage and resolution)."""
        if self.dataset is not None:
            return {"dataset": self.dataset}
        return {k: v for k in ("train", "validation", "test") if (v := getattr(self, k)) is not None}


# -- 2. tokenizer -----------------------------------------------------------------------------------------


class TokenizerSection(_Section):
    """``from: model`` (the pretrained model's AutoTokenizer) or ``train: sentencepiece`` (offline)."""

    model_config = ConfigDict(populate_by_name=True)

    from_: Literal["model"] | None = Field(default=None, alias="from")
    train: Literal["sentencepiece"] | None = None
    vocab_size: Annotated[int, Field(ge=16, le=1_000_000)] | None = None
    model_type: Literal["unigram", "bpe"] | None = None
    character_coverage: Annotated[float, Field(gt=0, le=1)] | None = None
    # Bounded: the tokenizers library's max_length is a machine word, and 10**30 tokens only failed at the
    # first evaluation (OverflowError), after the training it cost.
    max_source_length: Annotated[int, Field(ge=1, le=MAX_SEQUENCE_LENGTH)] = 512
    max_target_length: Annotated[int, Field(ge=1, le=MAX_SEQUENCE_LENGTH)] = 128
    max_unk_rate: Ratio = 0.01
    max_truncated_share: Ratio = 0.05

    @model_validator(mode="after")
    def _one_origin(self) -> TokenizerSection:
        if (self.from_ is None) == (self.train is None):
            raise ValueError("give exactly one of from: model or train: sentencepiece")
        if self.from_ is not None:
            extra = [
                k for k in ("vocab_size", "model_type", "character_coverage") if getattr(self, k) is not None
            ]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply with train: sentencepiece")
        elif self.vocab_size is None:
            raise ValueError("train: sentencepiece needs vocab_size")
        return self


# -- 3. model ---------------------------------------------------------------------------------------------


class T5Dims(_Section):
    """The T5Config sizes of a model trained from scratch (gated-gelu as flan-t5; tied, scaled output)."""

    # Bounded (T5-XXL: d_model 4096, d_ff 10240, 24 layers, 64 heads): a size of 1e9 passed validation and
    # failed only when the model was built, after the data was read and the tokenizer trained.
    d_model: Annotated[int, Field(ge=1, le=65_536)]
    d_ff: Annotated[int, Field(ge=1, le=262_144)]
    num_layers: Annotated[int, Field(ge=1, le=256)]
    num_heads: Annotated[int, Field(ge=1, le=1024)]
    d_kv: Annotated[int, Field(ge=1, le=8192)] | None = None
    num_decoder_layers: Annotated[int, Field(ge=1, le=256)] | None = None
    dropout_rate: Annotated[float, Field(ge=0, lt=1)] = 0.1
    feed_forward_proj: Literal["gated-gelu", "relu", "gelu"] = "gated-gelu"
    relative_attention_num_buckets: Annotated[int, Field(ge=4, le=1024)] = 32  # T5 halves it twice
    # transformers 5 ties T5's output layer to the shared embedding whatever this says; true also scales the
    # decoder output by d_model**-0.5, which a tied head needs (false: a loss near 36 at init for `tiny`).
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _heads_fit(self) -> T5Dims:
        if self.d_kv is None and self.d_model % self.num_heads:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}; give d_kv explicitly"
            )
        return self

    @property
    def kv(self) -> int:
        return self.d_kv if self.d_kv is not None else self.d_model // self.num_heads

    def parameters(self, vocab_size: int) -> int:
        """The parameter count of the T5 model these sizes build (one shared, tied embedding)."""
        d, inner = self.d_model, self.num_heads * self.kv
        attention = 4 * d * inner  # q, k, v, o
        ff = (3 if self.feed_forward_proj.startswith("gated") else 2) * d * self.d_ff
        bias = self.relative_attention_num_buckets * self.num_heads  # in the first layer of each stack
        encoder = self.num_layers * (attention + ff + 2 * d) + bias + d
        decoder = (self.num_decoder_layers or self.num_layers) * (2 * attention + ff + 3 * d) + bias + d
        return vocab_size * d + encoder + decoder


PRESETS: dict[str, T5Dims] = {
    # trains in minutes on two CPU cores
    "tiny": T5Dims(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16),
    # google/flan-t5-small and google/flan-t5-base
    "small": T5Dims(d_model=512, d_ff=1024, num_layers=8, num_heads=6, d_kv=64),
    "base": T5Dims(d_model=768, d_ff=2048, num_layers=12, num_heads=12, d_kv=64),
}


class ModelSection(_Section):
    """``pretrained: HUB_ID_OR_PATH``, or ``init: scratch`` with a ``preset`` or explicit ``config`` sizes."""

    pretrained: Annotated[str, Field(min_length=1)] | None = None
    revision: str | None = None
    init: Literal["scratch"] | None = None
    preset: Literal["tiny", "small", "base"] | None = None
    config: T5Dims | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> ModelSection:
        if (self.pretrained is None) == (self.init is None):
            raise ValueError("give exactly one of pretrained: HUB_ID_OR_PATH or init: scratch")
        if self.pretrained is not None:
            extra = [k for k in ("preset", "config") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{' and '.join(extra)} only apply with init: scratch")
        else:
            if self.revision is not None:
                raise ValueError("revision only applies with pretrained")
            if (self.preset is None) == (self.config is None):
                raise ValueError("init: scratch needs exactly one of preset (tiny|small|base) or config")
        return self

    def dims(self) -> T5Dims | None:
        """The sizes of a scratch model (None for a pretrained one)."""
        if self.init is None:
            return None
        return self.config if self.config is not None else PRESETS[self.preset or "tiny"]


# -- 4. hyperparameters -----------------------------------------------------------------------------------


class Hyperparameters(_Section):
    lr: Annotated[float, Field(gt=0, le=10)]
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    batch_size: PositiveInt = 8
    gradient_accumulation: PositiveInt = 1
    epochs: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 42  # the loop derives per-rank seeds that must fit int64

    @model_validator(mode="after")
    def _exclusive(self) -> Hyperparameters:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("give exactly one of epochs or max_steps")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        return self


# -- 5. distributed and precision -------------------------------------------------------------------------


class DistributedSection(_Section):
    """How the processes talk and load data; the process count comes from ``yard train --nproc``."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    dataloader_workers: Annotated[int, Field(ge=0, le=64)] = 2
    pin_memory: bool | Literal["auto"] = "auto"


# -- 6. training loop -------------------------------------------------------------------------------------


class EarlyStopping(_Section):
    metric: str = "loss"
    patience: PositiveInt = 3
    mode: Literal["min", "max"] | None = None
    min_delta: Annotated[float, Field(ge=0)] = 0.0

    @property
    def direction(self) -> Literal["min", "max"]:
        return self.mode or ("min" if self.metric in _LOWER_IS_BETTER else "max")


class GenerationSettings(_Section):
    num_beams: Beams = 1
    max_new_tokens: NewTokens = 128


class TrainSection(_Section):
    eval_every_steps: PositiveInt | None = None
    log_every_steps: PositiveInt = 10
    eval_max_samples: PositiveInt | None = None
    early_stopping: EarlyStopping | None = None
    generation: GenerationSettings = GenerationSettings()

    @model_validator(mode="after")
    def _stopping_needs_evaluations(self) -> TrainSection:
        if self.early_stopping is not None and self.eval_every_steps is None:
            raise ValueError(
                "early_stopping needs eval_every_steps: it judges the periodic evaluations, and without "
                "them it would never stop anything"
            )
        return self


# -- 7. checkpoints ---------------------------------------------------------------------------------------


class CheckpointSection(_Section):
    every_steps: PositiveInt | None = None
    keep_last: PositiveInt = 2
    keep_best: bool = True
    metric: str = "loss"
    mode: Literal["min", "max"] | None = None

    @property
    def direction(self) -> Literal["min", "max"]:
        return self.mode or ("min" if self.metric in _LOWER_IS_BETTER else "max")


# -- 8. search space --------------------------------------------------------------------------------------

_SCALARS: set[type] = {str, int, float, bool}


class SearchParam(_Section):
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _sane(self) -> SearchParam:
        if self.type == "categorical":
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical takes choices only (no low, high, log or step)")
            if not self.choices:
                raise ValueError("categorical needs a non-empty list of choices")
            for c in self.choices:
                if not isinstance(c, str | int | float | bool):
                    raise ValueError(f"choice {c!r} is not a string, number or boolean")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low and high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be less than high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int":
            for k in ("low", "high", "step"):
                v = getattr(self, k)
                if v is not None and not float(v).is_integer():
                    raise ValueError(f"int parameter needs an integer {k} (got {v:g})")
        return self

    def bounds(self) -> list[Any]:
        """The values whose validity stands for the whole range (the ends, or every choice)."""
        if self.type == "categorical":
            return list(self.choices or [])
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


# -- 9. evaluation ----------------------------------------------------------------------------------------


class EvaluationSection(_Section):
    metrics: Annotated[list[EvalMetric], Field(min_length=1)] = ["bleu", "rougeL", "exact_match", "gen_len"]
    decoding: Literal["greedy", "beam"] = "greedy"
    num_beams: Beams | None = None
    max_new_tokens: NewTokens = 128
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 32  # as generate() bounds it

    @model_validator(mode="after")
    def _decoding(self) -> EvaluationSection:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("metrics lists a metric twice")
        if self.decoding == "greedy" and self.num_beams not in (None, 1):
            raise ValueError("num_beams > 1 needs decoding: beam")
        if self.decoding == "beam" and (self.num_beams or 4) < 2:
            raise ValueError("decoding: beam needs num_beams >= 2")
        return self

    @property
    def beams(self) -> int:
        return 1 if self.decoding == "greedy" else (self.num_beams or 4)


# -- the recipe -------------------------------------------------------------------------------------------


class Recipe(_Section):
    """A whole training recipe. Build one with :func:`load_recipe` or :func:`parse_recipe`."""

    experiment: Annotated[str, Field(min_length=1)] | None = None
    description: str | None = None
    data: DataSection
    tokenizer: TokenizerSection = TokenizerSection.model_validate({"from": "model"})
    model: ModelSection
    hyperparameters: Hyperparameters
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    distributed: DistributedSection = DistributedSection()
    train: TrainSection = TrainSection()
    checkpoints: CheckpointSection = CheckpointSection()
    evaluation: EvaluationSection = EvaluationSection()
    search: dict[str, SearchParam] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.tokenizer.from_ == "model" and self.model.pretrained is None:
            raise ValueError(
                "tokenizer from: model needs a pretrained model; a scratch model needs train: sentencepiece"
            )
        if self.tokenizer.from_ != "model" and self.model.pretrained is not None:
            # A new vocabulary numbers its pieces afresh: every id would look up the embedding the pretrained
            # model learnt for another token, so fine-tuning would start from noise, silently.
            raise ValueError(
                "tokenizer train: sentencepiece with a pretrained model gives its embeddings other tokens' "
                "ids; use tokenizer from: model with a pretrained model (or init: scratch to train both)"
            )
        known = ("loss", *self.evaluation.metrics)
        for where, metric in (
            ("train.early_stopping.metric", self.train.early_stopping and self.train.early_stopping.metric),
            ("checkpoints.metric", self.checkpoints.metric),
        ):
            if metric is not None and metric not in known:
                raise ValueError(
                    f"{where}: {metric!r} is not computed; use loss or one of evaluation.metrics "
                    f"({', '.join(self.evaluation.metrics)})"
                )
        dims = self.model.dims()
        if dims is not None and self.tokenizer.vocab_size is not None:
            # Each size is bounded but not their product: catch a model that cannot fit before the data and
            # tokenizer work, not when it is built.
            estimate = dims.parameters(self.tokenizer.vocab_size)
            if estimate > MAX_SCRATCH_PARAMETERS:
                raise ValueError(
                    f"model.config with tokenizer.vocab_size {self.tokenizer.vocab_size} makes a model of "
                    f"about {estimate / 1e9:,.1f} billion parameters, over the limit of "
                    f"{MAX_SCRATCH_PARAMETERS / 1e9:,.0f} billion; use smaller sizes"
                )
        if self.search:
            self._check_search(self.search)
        return self

    def _check_search(self, space: dict[str, SearchParam]) -> None:
        base = self.model_dump(by_alias=True, exclude_unset=True, exclude={"search"})
        for path, param in space.items():
            kinds = _leaf_kinds(path)
            if kinds is None:
                raise ValueError(f"search.{path}: not a recipe field{_suggest_path(path)}")
            wanted: set[type] = (
                {float} if param.type == "float" else {int} if param.type == "int" else _SCALARS
            )
            if not kinds & wanted:
                names = "/".join(sorted(k.__name__ for k in kinds)) or "a section"
                raise ValueError(f"search.{path}: a {param.type} parameter cannot set {path} ({names})")
            for value in param.bounds():
                try:
                    Recipe.model_validate(_set_path(base, path, value))
                except pydantic.ValidationError as exc:
                    problems = "; ".join(_problems(exc))
                    raise ValueError(f"search.{path}: the value {value!r} is not valid: {problems}") from None

    def params(self) -> dict[str, str | float | int]:
        """Every setting as a flat ``section.key`` -> value dict, for logging to a run (the search space and
        the description are left out; lists are comma-joined, booleans are "true"/"false")."""
        out: dict[str, str | float | int] = {}
        _flatten(
            self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"search", "description"}),
            "",
            out,
        )
        return out

    def with_overrides(self, overrides: Mapping[str, Any]) -> Recipe:
        """A validated copy with ``section.key`` -> value overrides applied (how HPO trials are built).
        Raises :class:`~modelyard.errors.ValidationError` naming the bad key or value."""
        data = self.model_dump(by_alias=True, exclude_unset=True)
        for path, value in overrides.items():
            try:
                data = _set_path(data, path, value)
            except ValueError as exc:
                raise ValidationError(f"override {path!r}: {exc}") from None
        return parse_recipe(data, source="overrides")


# -- schema walking (search paths, suggestions) -----------------------------------------------------------


def _unwrap(tp: Any) -> list[Any]:
    """The concrete member types of an annotation (Annotated, Optional and unions removed)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in typing.get_args(tp) for t in _unwrap(arg)]
    if origin is Literal:
        return [type(a) for a in typing.get_args(tp)]
    return [tp]


def _section_at(parts: list[str], root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    model: type[BaseModel] = root or Recipe
    for part in parts:
        field = _field(model, part)
        if field is None:
            return None
        sub = [t for t in _unwrap(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not sub:
            return None
        model = sub[0]
    return model


def _field(model: type[BaseModel], key: str) -> pydantic.fields.FieldInfo | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _leaf_kinds(path: str) -> set[type] | None:
    """The scalar types a dotted path can hold, or None if it names no field. ``search`` is not searchable."""
    parts = path.split(".")
    if parts[0] == "search":
        return None
    model = _section_at(parts[:-1])
    field = _field(model, parts[-1]) if model is not None else None
    if field is None:
        return None
    kinds = {t for t in _unwrap(field.annotation) if t in (str, int, float, bool)}
    if float in kinds:
        kinds.add(int)  # a float field takes integers too
    return kinds


def _suggest_path(path: str) -> str:
    parts = path.split(".")
    model = _section_at(parts[:-1])
    if model is None:
        return ""
    close = difflib.get_close_matches(parts[-1], _keys(model), n=1)
    return f" (did you mean {'.'.join([*parts[:-1], close[0]])}?)" if close else ""


def _set_path(data: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with the dotted ``path`` set to ``value`` (missing sections are created)."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError("expected a dotted path such as hyperparameters.lr")
    root: dict[str, Any] = dict(data)
    node = root
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, Mapping):
            raise ValueError(f"{'.'.join(parts[: i + 1])} is not a section")
        node[part] = dict(child)
        node = node[part]
    node[parts[-1]] = value
    return root


def _flatten(value: Any, prefix: str, out: dict[str, str | float | int]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    elif isinstance(value, list):
        out[prefix] = ",".join(str(v) for v in value)
    elif isinstance(value, int | float | str):
        out[prefix] = value
    else:
        out[prefix] = str(value)


# -- errors -----------------------------------------------------------------------------------------------


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: Mapping[str, Any], root: type[BaseModel] | None = None) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        loc = [str(p) for p in err["loc"]]
        model = _section_at(loc[:-1], root)
        close = difflib.get_close_matches(loc[-1], _keys(model), n=1) if model is not None else []
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, ") :]
    msg = msg.replace("Input should be", "must be")
    if kind.endswith("_type") or kind in ("model_type", "dict_type", "list_type", "finite_number"):
        msg += f" (got {_show(err.get('input'))})"
    return msg


def _show(value: Any) -> str:
    # reprlib, not repr: YAML anchors let a 1 KiB file stand for billions of shared strings (an alias
    # bomb), and a full repr of the offending value would walk every one of them.
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 3, 4, 4, 60, 60
    text = short.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems(exc: pydantic.ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        where = _loc(err["loc"])
        msg = _message(err, root)
        # A cross-field check of the whole recipe names its own key in the message already.
        problems.append(f"{where}: {msg}" if where else msg)
    return problems


def _invalid(
    source: str, exc: pydantic.ValidationError, root: type[BaseModel] | None = None, kind: str = "recipe"
) -> ValidationError:
    problems = _problems(exc, root)
    what = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    return ValidationError(f"{source}: invalid {kind}, {what}: " + "; ".join(problems), problems=problems)


M = typing.TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, *, source: str, kind: str) -> M:
    """Validate ``data`` as ``model`` (a closed, strict schema such as a recipe or a gate policy): one
    ValidationError listing every problem as ``key.path: message``, with a suggestion for unknown keys."""
    if not isinstance(data, Mapping):
        raise ValidationError(f"{source}: a {kind} must be a mapping of sections, not {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise _invalid(source, exc, model, kind) from None


# -- loading ----------------------------------------------------------------------------------------------


class _StoredLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float rule: ``1e-4`` is a float, not the string "1e-4". For
    texts stored before duplicate keys were refused (a run's recipe, a queued job's): read as then."""


class _Loader(_StoredLoader):
    """:class:`_StoredLoader`, and a key given twice in one mapping is an error (PyYAML keeps the last
    one silently, which can drop a whole gate section or hyperparameter)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_StoredLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StoredLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_recipe(data: Any, *, source: str = "recipe") -> Recipe:
    """Validate a mapping (parsed YAML or a dict) as a recipe; ``source`` names it in errors."""
    if not isinstance(data, Mapping):
        raise ValidationError(
            f"{source}: a recipe must be a mapping of sections (data, model, hyperparameters, ...), "
            f"not {type(data).__name__}"
        )
    return parse_model(Recipe, data, source=source, kind="recipe")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate the YAML recipe at ``path`` (safe loader; nothing in it is executed)."""
    return parse_recipe(read_yaml(path, "recipe"), source=str(path))


def read_yaml(path: str | Path, kind: str) -> Any:
    """The YAML document at ``path`` (safe loader with YAML 1.2 floats); clear errors naming ``kind``."""
    p = Path(path)
    try:
        # Bounded before anything is parsed: megabytes of YAML take minutes and gigabytes to parse.
        with p.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise ValidationError(f"{kind} {str(p)!r} has more than 1 MiB; a YAML file may have at most that")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{kind} {str(p)!r} not found") from None
    except IsADirectoryError:
        raise UsageError(f"{kind} {str(p)!r} is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{kind} {str(p)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{kind} {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    return parse_yaml(text, source=str(p))


def parse_yaml(text: str, *, source: str, stored: bool = False) -> Any:
    """``text`` parsed with the safe loader and YAML 1.2 floats; ValidationError naming ``source``.
    ``stored``: a text the platform kept (a run's recipe), which may predate the duplicate-key check."""
    try:
        return yaml.load(text, Loader=_StoredLoader if stored else _Loader)  # noqa: S506 (SafeLoaders)
    except RecursionError:  # [[[[... or {a: {a: ... thousands deep: the loader recurses per level
        raise ValidationError(f"{source}: not valid YAML: it is nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationError(f"{source}: not valid YAML{where}: {problem}") from None


def recorded_recipe(platform: Platform, manifest: Mapping[str, Any], spec: str) -> Recipe | None:
    """The recipe a registered version's signed manifest records (``lineage.recipe``, the digest of its
    run's recipe.yaml), parsed as it was stored; None when it records none (registered from a directory,
    or an optimised variant: see its ``lineage.parent``)."""
    digest = (manifest.get("lineage") or {}).get("recipe")
    if not digest:
        return None
    text = b"".join(platform.artifacts.iter_bytes(digest)).decode("utf-8")
    source = f"{spec}'s recipe"
    return parse_recipe(parse_yaml(text, source=source, stored=True), source=source)


# -- checks against the platform --------------------------------------------------------------------------


def check_data(platform: Platform, ctx: Context, recipe: Recipe) -> dict[str, VersionInfo]:
    """Resolve every dataset version the recipe reads (role -> version), before any work starts. Raises
    :class:`~modelyard.errors.NotFoundError` naming every missing version (and a missing ``data.file``), or
    :class:`~modelyard.errors.UsageError` where the file to read cannot be chosen (several table files)."""
    from modelyard.data import show
    from modelyard.data._versions import members

    found: dict[str, VersionInfo] = {}
    missing: list[str] = []
    for role, spec in recipe.data.versions().items():
        try:
            found[role] = show(platform, ctx, spec)
        except NotFoundError as exc:
            missing.append(f"data.{role}: {spec} not found ({exc.message})")
    read: dict[str, list[str]] = {}

    def paths(info: VersionInfo) -> list[str]:
        """The member paths of a version, each manifest read once (train, validation, test may share one)."""
        if info.manifest_digest not in read:
            read[info.manifest_digest] = [m.path for m in members(platform.artifacts, info.manifest_digest)]
        return read[info.manifest_digest]

    if not missing and recipe.data.file is not None:
        for info in found.values():
            if recipe.data.file not in paths(info):
                missing.append(
                    f"data.file: {recipe.data.file!r} is not a member of {info.name}@{info.version}"
                )
    if missing:
        raise NotFoundError("; ".join(missing), missing=missing)
    if recipe.data.file is None:
        # The member each role reads, chosen as training will: a version with several table files and no
        # data.file was accepted (a queued job) and then could only fail at once.
        from modelyard.training._data import choose_member

        unclear: list[str] = []
        for role, info in found.items():
            try:
                choose_member(paths(info), recipe.data, role=None if role == "dataset" else role)
            except UsageError as exc:
                why = exc.message.removeprefix("the dataset version ")
                unclear.append(f"data.{role}: {info.name}@{info.version} {why}")
        if unclear:
            raise UsageError("; ".join(unclear))
    return found
