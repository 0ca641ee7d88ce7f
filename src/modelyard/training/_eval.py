"""Step 9: generation, metrics and the evaluation report.

* :func:`generate` decodes a list of sources with a seq2seq model (greedy or beam), in batches sorted by
  length so little padding is computed, and returns the texts in the caller's order.
* :func:`score` computes the metrics of ``EVAL_METRICS`` over predictions and references, overall and per
  slice (group value).
* :func:`evaluate` is both on a list of :class:`Example`, plus the copy baseline (prediction = source)
  scored the same way, and returns an :class:`EvalReport` (JSON and Markdown).

Metric conventions (the same in every report, log and gate):

* **Text normalisation.** Both sides are NFKC-normalised, runs of whitespace are collapsed to one space and
  the ends are stripped before any metric. The T5 SentencePiece tokenizers (flan-t5's and the offline
  one) normalise text this way, so a model cannot produce anything else; scoring the raw reference would
  count ``"a  b"`` vs ``"a b"`` as an error the model cannot fix. Case is kept.
* **Scale.** Every rate is in [0, 1]: ``bleu`` is sacrebleu's corpus BLEU divided by 100, ``rouge1``,
  ``rouge2``, ``rougeL`` are mean F-measures, ``exact_match`` is the share of exact matches. ``gen_len`` is
  the mean number of whitespace-separated words of the prediction (tokenizer independent, so models with
  different tokenizers and the copy baseline are comparable).
* **BLEU.** ``sacrebleu`` corpus BLEU, 13a tokenisation, ``exp`` smoothing, ``effective_order=True``: the
  geometric mean runs over the n-gram orders the hypotheses have, so a corpus of short outputs (dates,
  amounts: fewer than four tokens) is not 0 just because it has no 4-grams. Where every order is present it
  equals standard BLEU. The signature is stored in the report. An empty hypothesis corpus against an empty
  reference corpus scores 1.
* **ROUGE.** ``rouge-score`` F-measure, stemming **off** (the Porter stemmer is English-only and would
  treat locales differently; canonical forms are not inflected). Its default tokenizer drops every
  non-ASCII character (``März`` becomes ``m rz``), so a Unicode-aware one is used that does the same for
  ASCII (lower case, letters and digits, everything else separates tokens) and keeps other letters. Two
  texts with the same tokens score 1 (rouge-score gives ROUGE-2 0 to a one-token text, and 0 to two empty
  ones); one empty side scores 0.
* **Exact match.** After the normalisation above; case-sensitive.

sacrebleu, rouge-score and torch are imported inside the functions.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelyard._markdown import md_text
from modelyard.errors import UsageError
from modelyard.training._recipe import EVAL_METRICS

if TYPE_CHECKING:
    from modelyard.training._data import Example
    from modelyard.training._recipe import EvaluationSection

REPORT_FORMAT = "modelyard.eval/1"
#: slice name of examples whose group value is null
MISSING_GROUP = "(missing)"
#: metrics in [0, 1] (the rest, gen_len, is a length)
RATE_METRICS = frozenset({"bleu", "rouge1", "rouge2", "rougeL", "exact_match"})
_ROUGE = ("rouge1", "rouge2", "rougeL")
_METRIC_KEY_BAD = re.compile(r"[^A-Za-z0-9_.\- ]")

Progress = Callable[[int, int], None]


# -- generation -------------------------------------------------------------------------------------------


def generate(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    *,
    num_beams: int = 1,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    max_source_length: int = 512,
    device: Any = None,
    progress: Progress | None = None,
) -> list[str]:
    """Decode ``sources`` with ``model`` (greedy for ``num_beams=1``, beam search otherwise; never sampled)
    and return the texts in the order of ``sources``.

    Sources are tokenised once (truncated to ``max_source_length`` tokens), sorted by length (longest
    first, so an out-of-memory error comes at once) and cut into batches of ``batch_size``, so each batch
    pads to nearly its own length. The model runs in eval mode under ``torch.inference_mode``; each
    module's train/eval mode is restored afterwards. ``device`` is where the inputs go (default: the
    device of the model's parameters). A ``DistributedDataParallel`` wrapper is unwrapped.
    ``progress(done, total)`` is called after each batch."""
    from modelyard.training._recipe import MAX_BEAMS, MAX_SEQUENCE_LENGTH

    # Bounded as in a recipe: the tokenizer's max_length is a machine word (10**30 was an OverflowError).
    for name, value, most in (
        ("num_beams", num_beams, MAX_BEAMS),
        ("max_new_tokens", max_new_tokens, MAX_SEQUENCE_LENGTH),
        ("batch_size", batch_size, 1_000_000),
        ("max_source_length", max_source_length, MAX_SEQUENCE_LENGTH),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise UsageError(f"{name} must be a whole number from 1 to {most:,}, got {value!r}")
    texts = list(sources)
    bad = [i for i, s in enumerate(texts) if not isinstance(s, str)]
    if bad:
        raise UsageError(f"sources must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    if not texts:
        return []
    import torch

    net = model.module if not hasattr(model, "generate") and hasattr(model, "module") else model
    if device is None:
        first = next(iter(net.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(net.config, "pad_token_id", None) or 0

    encoded: list[list[int]] = tokenizer(texts, truncation=True, max_length=max_source_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: (-len(encoded[i]), i))
    out: list[str | None] = [None] * len(texts)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    seq = encoded[i]
                    ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[row, : len(seq)] = 1
                generated = net.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    num_beams=num_beams,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                )
                decoded = tokenizer.batch_decode(generated.cpu(), skip_special_tokens=True)
                for i, text in zip(idx, decoded, strict=True):
                    out[i] = str(text).strip()
                if progress is not None:
                    progress(min(start + batch_size, len(order)), len(order))
    finally:
        for module, training in modes:
            module.training = training
    return [t if t is not None else "" for t in out]


# -- metrics ----------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFKC, whitespace runs collapsed to one space, ends stripped (what every metric compares)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


class _RougeTokenizer:
    """rouge-score's default tokenizer (lower case; runs of letters and digits are tokens, everything else
    separates them) with Unicode letters and digits kept instead of dropped."""

    _TOKEN = re.compile(r"[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The metric names, validated (unknown names are an error with a suggestion), duplicates dropped."""
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(dict.fromkeys(metrics))
    if not names:
        raise UsageError(f"no metrics to compute; choose from {', '.join(EVAL_METRICS)}")
    for name in names:
        if name not in EVAL_METRICS:
            close = difflib.get_close_matches(str(name), EVAL_METRICS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"unknown metric {name!r}{hint}; choose from {', '.join(EVAL_METRICS)}")
    return names


@dataclass(frozen=True)
class Scores:
    """Metrics of one set of predictions: ``overall`` (metric -> value) and, when groups were given,
    ``slices`` (group -> metric -> value) with ``slice_sizes`` (group -> examples)."""

    n: int
    overall: dict[str, float]
    slices: dict[str, dict[str, float]] = field(default_factory=dict)
    slice_sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "overall": dict(self.overall),
            "slices": {g: {"n": self.slice_sizes[g], "metrics": dict(m)} for g, m in self.slices.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scores:
        slices = data.get("slices") or {}
        return cls(
            n=int(data["n"]),
            overall={str(k): float(v) for k, v in data["overall"].items()},
            slices={str(g): {str(k): float(v) for k, v in s["metrics"].items()} for g, s in slices.items()},
            slice_sizes={str(g): int(s["n"]) for g, s in slices.items()},
        )

    def flat(self, prefix: str = "") -> dict[str, float]:
        """``metric`` and ``slice/<group>/metric`` -> value, for ``log_metrics`` (group names reduced to
        the characters a metric key allows)."""
        out = {f"{prefix}{k}": v for k, v in self.overall.items()}
        for group, values in self.slices.items():
            key = metric_key_part(group)
            out.update({f"{prefix}slice/{key}/{k}": v for k, v in values.items()})
        return out


def metric_key_part(text: str) -> str:
    """A metric key segment naming the group ``text``: ``text`` itself when a key allows it (at most 100
    characters), else ``text`` with every character a key refuses replaced by ``_`` and a short hash of
    ``text`` added, so that two groups never share a key (日本 and 中国 would both be ``__``) and the key
    depends on the group alone. The slice of examples with no group is ``_missing_``."""
    if text == MISSING_GROUP:
        return "_missing_"
    cleaned = _METRIC_KEY_BAD.sub("_", text).strip()
    if cleaned == text and text not in ("", ".", "..") and len(text) <= 100:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[:80].strip('. ') or '_'}_{digest}"


def score(
    predictions: Sequence[str],
    references: Sequence[str],
    metrics: Sequence[str] = EVAL_METRICS,
    *,
    groups: Sequence[str | None] | None = None,
) -> Scores:
    """Score ``predictions`` against ``references`` (one reference each) with ``metrics`` (names from
    ``EVAL_METRICS``), overall and, with ``groups`` (one group value per example; None is the slice
    ``"(missing)"``), per group. See the module docstring for the conventions."""
    names = check_metrics(metrics)
    preds, refs = list(predictions), list(references)
    if len(preds) != len(refs):
        raise UsageError(f"{len(preds)} predictions but {len(refs)} references; give one reference each")
    if not preds:
        raise UsageError("nothing to score: no predictions")
    for what, items in (("prediction", preds), ("reference", refs)):
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise UsageError(f"{what} {i} is {type(item).__name__}, not a string")
    p = [normalize_text(t) for t in preds]
    r = [normalize_text(t) for t in refs]
    overall = _score_all(p, r, names)
    if groups is None:
        return Scores(len(p), overall)
    keys = [MISSING_GROUP if g is None else str(g) for g in groups]
    if len(keys) != len(p):
        raise UsageError(f"{len(keys)} group values but {len(p)} predictions; give one group per example")
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    slices = {
        key: _score_all([p[i] for i in idx], [r[i] for i in idx], names)
        for key, idx in sorted(members.items())
    }
    return Scores(len(p), overall, slices, {k: len(v) for k, v in sorted(members.items())})


def bleu_signature() -> str:
    """sacrebleu's signature of the BLEU settings used (stored with every report)."""
    bleu = _bleu()
    bleu.corpus_score(["a"], [["a"]])  # the signature needs the number of references
    return str(bleu.get_signature())


def _bleu() -> Any:
    from sacrebleu.metrics.bleu import BLEU

    return BLEU(effective_order=True)


def _score_all(p: list[str], r: list[str], names: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "bleu" in names:
        result = _bleu().corpus_score(p, [r])
        if result.sys_len == 0 and result.ref_len == 0:
            out["bleu"] = 1.0
        else:
            out["bleu"] = min(1.0, max(0.0, float(result.score) / 100.0))
    rouge = [n for n in _ROUGE if n in names]
    if rouge:
        from rouge_score import rouge_scorer

        tok = _RougeTokenizer()
        scorer = rouge_scorer.RougeScorer(rouge, use_stemmer=False, tokenizer=tok)
        totals = dict.fromkeys(rouge, 0.0)
        for pred, ref in zip(p, r, strict=True):
            if tok.tokenize(pred) == tok.tokenize(ref):  # also one token, or none: no bigram to count
                for n in rouge:
                    totals[n] += 1.0
                continue
            result = scorer.score(ref, pred)  # (target, prediction)
            for n in rouge:
                totals[n] += float(result[n].fmeasure)
        out.update({n: totals[n] / len(p) for n in rouge})
    if "exact_match" in names:
        out["exact_match"] = sum(a == b for a, b in zip(p, r, strict=True)) / len(p)
    if "gen_len" in names:
        out["gen_len"] = sum(len(t.split()) for t in p) / len(p)
    return {n: out[n] for n in names}


# -- the report -------------------------------------------------------------------------------------------


@dataclass
class EvalReport:
    """An evaluation: the model's scores, the copy baseline's, the decoding settings, sample predictions
    and ``info`` (what was evaluated on what, filled in by the caller: model, data, split, ...)."""

    n: int
    metrics: list[str]
    decoding: dict[str, Any]
    model: Scores
    baseline: Scores | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    bleu_signature: str = ""

    @property
    def overall(self) -> dict[str, float]:
        return self.model.overall

    @property
    def slices(self) -> dict[str, dict[str, float]]:
        return self.model.slices

    def metrics_to_log(self) -> dict[str, float]:
        """The model's overall and per-slice metrics and the baseline's overall ones (``baseline/<m>``),
        as metric keys for ``log_metrics``."""
        out = self.model.flat()
        if self.baseline is not None:
            out.update({f"baseline/{k}": v for k, v in self.baseline.overall.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "n": self.n,
            "metrics": list(self.metrics),
            "decoding": dict(self.decoding),
            "info": dict(self.info),
            "overall": dict(self.model.overall),
            "slices": self.model.to_dict()["slices"],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "samples": [dict(s) for s in self.samples],
            "seconds": round(self.seconds, 3),
            "bleu_signature": self.bleu_signature,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        if data.get("format") != REPORT_FORMAT:
            raise UsageError(f"not an evaluation report (format {data.get('format')!r}, not {REPORT_FORMAT})")
        model = Scores.from_dict({"n": data["n"], "overall": data["overall"], "slices": data["slices"]})
        base = data.get("baseline")
        return cls(
            n=int(data["n"]),
            metrics=[str(m) for m in data["metrics"]],
            decoding=dict(data["decoding"]),
            model=model,
            baseline=None if base is None else Scores.from_dict(base),
            samples=list(data.get("samples") or []),
            info=dict(data.get("info") or {}),
            seconds=float(data.get("seconds") or 0.0),
            bleu_signature=str(data.get("bleu_signature") or ""),
        )

    def to_markdown(self) -> str:
        lines = ["# Evaluation report", ""]
        for key, value in self.info.items():
            lines.append(f"- {_md(str(key))}: {_md(str(value))}")
        dec = self.decoding
        beams = f", {dec.get('num_beams')} beams" if dec.get("decoding") == "beam" else ""
        lines += [
            f"- examples: {self.n}",
            f"- decoding: {dec.get('decoding')}{beams}, max_new_tokens {dec.get('max_new_tokens')}, "
            f"max_source_length {dec.get('max_source_length')}, batch_size {dec.get('batch_size')}",
            "- scale: bleu, rouge and exact_match in [0, 1]; gen_len in words",
        ]
        if self.bleu_signature:
            lines.append(f"- BLEU: sacrebleu `{self.bleu_signature}`")
        lines += ["", "## Overall", ""]
        if self.baseline is not None:
            lines += ["| metric | model | copy baseline | difference |", "|---|---:|---:|---:|"]
            for m in self.metrics:
                a, b = self.model.overall[m], self.baseline.overall[m]
                lines.append(f"| {m} | {format_metric(m, a)} | {format_metric(m, b)} | {a - b:+.4f} |")
        else:
            lines += ["| metric | model |", "|---|---:|"]
            lines += [f"| {m} | {format_metric(m, self.model.overall[m])} |" for m in self.metrics]
        if self.model.slices:
            what = self.info.get("group_field") or "group"
            lines += ["", f"## Slices ({_md(str(what))})", ""]
            lines.append("| slice | n | " + " | ".join(self.metrics) + " |")
            lines.append("|---|---:|" + "---:|" * len(self.metrics))
            for group, values in self.model.slices.items():
                cells = " | ".join(format_metric(m, values[m]) for m in self.metrics)
                lines.append(f"| {_md(group)} | {self.model.slice_sizes[group]} | {cells} |")
        if self.samples:
            lines += ["", "## Samples", "", "| source | target | prediction |", "|---|---|---|"]
            for s in self.samples:
                lines.append(f"| {_md(s['source'])} | {_md(s['target'])} | {_md(s['prediction'])} |")
        return "\n".join(lines) + "\n"


def format_metric(name: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.2f}" if name == "gen_len" else f"{value:.4f}"


def _md(text: str) -> str:
    """Text (a dataset's, a model's output) as literal Markdown in a table cell or after a list item's key:
    no links, images, HTML or cells of its own."""
    return md_text(" ".join(text.split())) or " "


def evaluate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    section: EvaluationSection,
    *,
    max_source_length: int,
    baseline: bool = True,
    samples: int = 5,
    device: Any = None,
    progress: Progress | None = None,
    info: dict[str, Any] | None = None,
) -> EvalReport:
    """Generate for every example with the decoding of ``section`` and score the predictions with its
    metrics, overall and per group (when any example has a group); with ``baseline``, also the copy
    baseline (prediction = source). ``samples`` first examples are kept with their predictions."""
    items = list(examples)
    if not items:
        raise UsageError("nothing to evaluate: no examples")
    names = check_metrics(section.metrics)
    started = time.perf_counter()
    predictions = generate(
        model,
        tokenizer,
        [e.source for e in items],
        num_beams=section.beams,
        max_new_tokens=section.max_new_tokens,
        batch_size=section.batch_size,
        max_source_length=max_source_length,
        device=device,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    targets = [e.target for e in items]
    groups = [e.group for e in items] if any(e.group is not None for e in items) else None
    model_scores = score(predictions, targets, names, groups=groups)
    base = score([e.source for e in items], targets, names, groups=groups) if baseline else None
    kept = [
        {"source": e.source, "target": e.target, "prediction": p, "group": e.group}
        for e, p in zip(items[: max(0, samples)], predictions, strict=False)
    ]
    return EvalReport(
        n=len(items),
        metrics=names,
        decoding={
            "decoding": section.decoding,
            "num_beams": section.beams,
            "max_new_tokens": section.max_new_tokens,
            "batch_size": section.batch_size,
            "max_source_length": max_source_length,
        },
        model=model_scores,
        baseline=base,
        samples=kept,
        info=dict(info or {}),
        seconds=seconds,
        bleu_signature=bleu_signature() if "bleu" in names else "",
    )


__all__ = [
    "MISSING_GROUP",
    "REPORT_FORMAT",
    "EvalReport",
    "Scores",
    "bleu_signature",
    "check_metrics",
    "evaluate",
    "generate",
    "normalize_text",
    "score",
]
