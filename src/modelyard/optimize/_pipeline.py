"""``yard optimize NAME@V``: CPU variants of a registered PyTorch version, each measured against it on the
same examples, registered as a derived version, and the fastest one within the accuracy budget picked.

Variants: the ONNX export (FP32), its INT8 dynamic quantisation, and, when asked, a magnitude-pruned model
and a distilled student (each also exported to ONNX, INT8 when quantising). Every candidate, and the parent
as the baseline, is loaded the way serving loads it and measured the same way: quality on the evaluation
set (greedy, the training stage's ``score``), latency at batch 1 (p50/p95), throughput at batch 16, size on
disk. The measurements go into the variant's signed manifest (``benchmark``) with an evaluation report, and
lineage ``model:parent -> model:variant`` is recorded. A variant outside the budget is registered too (the
record of what was tried) but never picked.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.core._platform import Context, Platform
from modelyard.errors import UsageError, YardError

if TYPE_CHECKING:
    from modelyard.evaluation import EvalData
    from modelyard.registry import VersionInfo
    from modelyard.training._data import Example
    from modelyard.training._recipe import Recipe

METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "exact_match")
_BUDGET_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(-?\d+(?:\.\d+)?)\s*\Z")
Progress = Callable[[str], None]
NO_PRUNE = "--structured and --prune-finetune describe --prune SHARE; give --prune too, e.g. --prune 0.3"
#: the measuring settings and their ranges (those of a gate policy's data, decoding and latency); threads are
#: OS threads in torch and ONNX Runtime alike, so an absurd count exhausts the machine instead of failing
SETTINGS = {
    "max_samples": (1, 100_000),
    "max_new_tokens": (1, 1024),
    "latency_samples": (1, 10_000),
    "threads": (1, 256),
}


def parse_budget(text: str | Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    """``rougeL=-0.01`` (comma-separated or repeated): the largest allowed change of each metric; a negative
    number is the drop allowed. Refuses unknown metrics and positive bounds on nothing."""
    if isinstance(text, Mapping):
        # Numbers in positional notation: str(-1e-05) is no METRIC=DELTA text; NaN, infinities and bools
        # stay as written and are refused below.
        items = [
            f"{k}={Decimal(repr(v)):f}"
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            else f"{k}={v}"
            for k, v in text.items()
        ]
    else:
        items = [p for part in ([text] if isinstance(text, str) else list(text)) for p in part.split(",")]
    out: dict[str, float] = {}
    for item in (i for i in items if i.strip()):
        m = _BUDGET_RE.match(item)
        if m is None:
            raise UsageError(f"budget {item!r} is not METRIC=DELTA, such as rougeL=-0.01")
        if m[1] not in METRICS:
            raise UsageError(f"budget: unknown metric {m[1]!r}; expected one of {', '.join(METRICS)}")
        if m[1] in out:  # which one was meant? (the last used to win silently)
            raise UsageError(f"budget: {m[1]} is given twice; give each metric once")
        bound = float(m[2])
        if not math.isfinite(bound):  # 400 digits are -inf: every variant within it, -Infinity in --json
            raise UsageError(f"budget {m[1]}: the bound is too large to be a number; give one such as -0.01")
        out[m[1]] = bound
    if not out:
        raise UsageError("give an accuracy budget such as rougeL=-0.01")
    return out


@dataclass
class Measured:
    """One model measured on the evaluation set: quality, speed and size."""

    variant: str
    fmt: str
    size_mb: float
    p50_ms: float
    p95_ms: float
    throughput: float  # sequences/s at batch 16
    metrics: dict[str, float]
    delta: dict[str, float] = field(default_factory=dict)  # against the parent
    speedup: float = 1.0  # parent p50 / this p50
    within_budget: bool = True
    spec: str | None = None  # NAME@V once registered
    note: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "throughput_bs16": round(self.throughput, 3),
            "size_mb": round(self.size_mb, 3),
            "speedup_p50": round(self.speedup, 3),
            **{f"delta_{k}": round(v, 5) for k, v in sorted(self.delta.items())},
        }


@dataclass
class OptimizeReport:
    parent: str
    data: str
    examples: int
    budget: dict[str, float]
    baseline: Measured
    variants: list[Measured]
    picked: Measured | None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "parent": self.parent,
            "data": self.data,
            "examples": self.examples,
            "budget": self.budget,
            "baseline": asdict(self.baseline),
            "variants": [asdict(v) for v in self.variants],
            "picked": self.picked.spec if self.picked is not None else None,
        }


BUDGET_TOLERANCE = 1e-9


def judge(m: Measured, limits: Mapping[str, float]) -> None:
    """Set ``within_budget`` (every budgeted metric changed by at least its bound) and say what broke it."""
    # A drop of exactly the budget is within it (0.13 - 0.12 is -0.010000000000000009 in floats).
    m.within_budget = all(m.delta[k] >= bound - BUDGET_TOLERANCE for k, bound in limits.items())
    if not m.within_budget:
        worst = min(limits, key=lambda k: m.delta[k] - limits[k])
        m.note = f"{worst} {m.delta[worst]:+.4f} < budget {limits[worst]:+.4f}"


def _dir_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6


def _measure(
    root: Path,
    variant: str,
    rows: Sequence[Example],
    *,
    max_new_tokens: int,
    samples: int,
    threads: int | None,
) -> tuple[Measured, Any]:
    from modelyard.evaluation import latency_ms, throughput
    from modelyard.registry import load_dir
    from modelyard.training._eval import score

    model = load_dir(root, threads=threads)
    sources = [r.source for r in rows]
    preds = model.generate(sources, max_new_tokens=max_new_tokens, batch_size=32)
    scores = score(preds, [r.target for r in rows], METRICS, groups=[r.group for r in rows])
    lat = latency_ms(model, sources, max_new_tokens=max_new_tokens, samples=samples, warmup=2)
    tput = throughput(model, sources, max_new_tokens=max_new_tokens, batch=16)
    fmt = "onnx" if model.backend == "onnx" else "safetensors"
    return Measured(
        variant, fmt, _dir_mb(root), lat["p50_ms"], lat["p95_ms"], tput, dict(scores.overall)
    ), scores


def _report(scores: Any, rows: Sequence[Example], info: dict[str, Any]) -> bytes:
    """An evaluation report in the training stage's format (so cards and gates read it the same way)."""
    from modelyard.training._eval import REPORT_FORMAT

    body = {
        "format": REPORT_FORMAT,
        "n": len(rows),
        "metrics": list(METRICS),
        "decoding": {"decoding": "greedy", "max_new_tokens": info["max_new_tokens"]},
        "info": info,
        "overall": dict(scores.overall),
        "slices": scores.to_dict()["slices"],
        "baseline": None,
        "samples": [],
        "seconds": 0.0,
        "bleu_signature": "",
    }
    return json.dumps(body, indent=2, ensure_ascii=False).encode()


def _eval_rows(
    platform: Platform, ctx: Context, spec: str, data: EvalData | None, max_samples: int
) -> tuple[str, list[Any]]:
    """(what the examples are, the examples), chosen as the quality gates choose them (``_eval_set``):
    ``data`` if given, else the held-out split of the recipe that trained ``spec`` (for a variant registered
    without a recipe, its parent's): its test version (else validation), or, where the recipe cut one
    version by ratios, the same seeded test cut (else validation) the run held out. Whenever the examples
    come from the member the run cut, they are that run's cut, never its training rows. At most
    ``max_samples``, a seeded sample in file order."""
    from modelyard.errors import NotFoundError
    from modelyard.evaluation import EvalData
    from modelyard.evaluation._gates import _check_split, _eval_set, _trained_with

    run = _trained_with(platform, ctx, spec)
    explicit = data is not None
    splits: tuple[str, ...]
    if data is not None:
        # Fields the caller left out are the run's (its columns and format), as for the default data.
        inherit = ("format", "source_field", "target_field", "group_field") if run is not None else ()
        update: dict[str, Any] = {k: getattr(run, k) for k in inherit if k not in data.model_fields_set}
        data = data.model_copy(update={**update, "max_samples": max_samples})
        splits = (data.split,)
    elif run is None or (run.dataset is None and not (run.test or run.validation)):
        raise UsageError(
            f"{spec} names no held-out dataset version in its recipe; give the evaluation data with "
            "--data NAME@V (and --file MEMBER when the version holds several tables)"
        )
    else:
        held_out = run.dataset or run.test or run.validation
        assert held_out is not None
        data = EvalData(
            dataset=held_out,
            file=run.file,
            split="test" if run.dataset or run.test else "validation",
            format=run.format,
            source_field=run.source_field,
            target_field=run.target_field,
            group_field=run.group_field,
            max_samples=max_samples,
        )
        # A ratio cut may round the test share to no rows: then its validation rows, as training does.
        splits = ("test", "validation") if run.dataset is not None else (data.split,)
    for i, split in enumerate(splits):
        try:
            chosen = data.model_copy(update={"split": split})
            rows, member, cut = _eval_set(platform, ctx, chosen, run)
            break
        except NotFoundError:
            if i == len(splits) - 1:
                raise
    if explicit:
        _check_split(chosen, member, cut)  # as the gates do: `--data V` of a train-only version is refused
    if cut and run is not None:
        return f"{chosen.dataset} ({chosen.split} cut, seed {run.seed})", rows
    return chosen.dataset, rows


def _not_pytorch(platform: Platform, ctx: Context, info: VersionInfo) -> str:
    """Why a version that is not PyTorch (an ONNX export) cannot be optimised, naming the PyTorch version it
    came from where lineage records one (an INT8 variant's parent is the FP32 export, whose parent it is)."""
    from modelyard.registry import show

    origin, seen = info.parent, {info.spec}
    while origin is not None and origin not in seen:
        seen.add(origin)
        try:
            up = show(platform, ctx, origin)
        except YardError:  # removed, or not readable here: say what to give without naming it
            origin = None
            break
        if up.format == "safetensors":
            break
        origin = up.parent
    else:
        origin = None
    what = "an ONNX model" if info.format == "onnx" else f"a {info.format} model"
    instead = (
        f"optimise {origin}, the PyTorch version it was exported from"
        if origin is not None
        else "optimise the PyTorch/transformers version it was exported from (register that model first "
        "if it is not in the registry)"
    )
    return f"{info.spec} is {what} ({info.variant}), not a PyTorch/transformers model; {instead}"


def optimize(
    platform: Platform,
    ctx: Context,
    spec: str,
    *,
    quantize: bool = True,
    prune: float | None = None,
    structured: bool = False,
    prune_finetune: Recipe | None = None,
    distill: Recipe | None = None,
    budget: Mapping[str, float] | str | Sequence[str] | None = None,
    data: EvalData | None = None,
    max_samples: int = 200,
    max_new_tokens: int = 48,
    latency_samples: int = 20,
    threads: int | None = None,
    progress: Progress | None = None,
) -> OptimizeReport:
    """Make, measure and register the CPU variants of ``spec`` (a PyTorch version); pick the fastest one
    (p50 latency at batch 1) whose quality change is within ``budget`` (default ``rougeL=-0.01``)."""
    from modelyard.optimize._onnx import export_onnx
    from modelyard.optimize._quantize import quantize_int8
    from modelyard.registry import download, register, show

    say = progress or (lambda _msg: None)
    resource = f"model:{spec}"
    platform.authorize(ctx, "model.register", resource)
    try:  # refused before anything is downloaded or measured, and on record like other refusals
        from modelyard.optimize._onnx import require

        require("yard optimize", "torch", "transformers", "onnx", "onnxruntime")  # every run exports
        limits = parse_budget(budget or {"rougeL": -0.01})
        given = {
            "max_samples": max_samples,
            "max_new_tokens": max_new_tokens,
            "latency_samples": latency_samples,
        }
        for key, value in {**given, **({"threads": threads} if threads is not None else {})}.items():
            least, most = SETTINGS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
                raise UsageError(f"{key} must be a whole number from {least} to {most:,}, got {value!r}")
        if prune is not None and not 0 < prune < 1:
            raise UsageError(f"--prune must be a share of weights between 0 and 1, got {prune}")
        if prune is None and (structured or prune_finetune is not None):
            raise UsageError(NO_PRUNE)  # not silently ignored
        info = show(platform, ctx, spec)
        if info.format != "safetensors":
            raise UsageError(_not_pytorch(platform, ctx, info))
        from modelyard.registry import read_manifest

        _, manifest = read_manifest(platform, ctx, info.spec)  # verified once, read for both checks below
        if not any(f["path"] == "manifest.json" for f in manifest["files"]):
            # The exporters read the directory save_model writes; say so before anything is measured.
            raise UsageError(
                f"{info.spec} was registered from a directory save_model did not write (no "
                "manifest.json), which the ONNX export needs; load it, save it with "
                "modelyard.training.save_model and register that directory"
            )
        # no held-out data, or --data naming what is not there: refused on record too
        evaluated_on, rows = _eval_rows(platform, ctx, info.spec, data, max_samples)
    except YardError as exc:
        raise platform.refuse(ctx, "model.register", resource, exc) from None
    measure = dict(max_new_tokens=max_new_tokens, samples=latency_samples, threads=threads)
    with tempfile.TemporaryDirectory(prefix="yard-optimize-") as tmp_name:
        tmp = Path(tmp_name)
        say(f"downloading and verifying {info.spec}")
        _, parent_dir = download(platform, ctx, info.spec, tmp / "parent")
        if prune is not None:  # a hopeless prune is refused before the exports and measurements
            from modelyard.optimize._prune import check_request

            check_request(parent_dir, prune, structured)
        if distill is not None:  # so is a student with another vocabulary than its teacher's
            from modelyard.optimize._distill import check_student

            check_student(parent_dir, distill)
        say("measuring the parent (PyTorch eager)")
        baseline, _ = _measure(parent_dir, info.variant, rows, **measure)  # type: ignore[arg-type]
        baseline.spec = info.spec
        # (variant, directory, the run that trained its weights: a fine-tune or a distillation, and the
        # candidate it was exported from: its registered version is the parent, not the original)
        candidates: list[tuple[str, Path, str | None, str | None]] = []

        def onnx_forms(src: Path, prefix: str, run: str | None = None) -> None:
            say(f"exporting {prefix or 'the model'} to ONNX")
            exported = export_onnx(src, tmp / f"{prefix}onnx-fp32")
            source = prefix.rstrip("-") or None
            if not quantize or not prefix:
                candidates.append((f"{prefix}onnx-fp32", exported, run, source))
            if quantize:
                say(f"quantising {prefix or 'the model'} to INT8")
                int8 = quantize_int8(exported, tmp / f"{prefix}onnx-int8")
                candidates.append((f"{prefix}onnx-int8", int8, run, source))

        onnx_forms(parent_dir, "")
        if prune is not None:
            from modelyard.optimize._prune import prune_model

            name = f"pruned-{'s' if structured else 'u'}{prune:g}-"
            say(f"pruning {prune:.0%} of the weights ({'structured' if structured else 'unstructured'})")
            pruned = prune_model(
                parent_dir,
                tmp / "pruned",
                amount=prune,
                structured=structured,
                finetune=prune_finetune,
                platform=platform,
                ctx=ctx,
                source_name=info.spec,  # not the temp directory it was downloaded to
            )
            candidates.append((name.rstrip("-"), pruned.out_dir, pruned.finetune_run_id, None))
            onnx_forms(pruned.out_dir, name, pruned.finetune_run_id)
        if distill is not None:
            from modelyard.optimize._distill import distill as run_distill
            from modelyard.tracking import Client

            say("distilling a student")
            with Client(platform, project=ctx.project) as client:
                client.ctx = ctx  # the student's run belongs to whoever optimises
                result = run_distill(parent_dir, distill, client=client, teacher_name=info.spec)
                student = client.download_artifacts(result.run_id, "model", tmp / "student")
            candidates.append(("distilled", student, result.run_id, None))
            onnx_forms(student, "distilled-", result.run_id)

        # Every candidate is measured before any is registered: a failure or Ctrl-C while measuring (the
        # long part) registers nothing, where variants registered one by one stayed behind, and a second
        # run registered them again.
        measured: list[tuple[str, Path, str | None, str | None, Measured, Any]] = []
        for variant, root, trained_by, source in candidates:
            say(f"measuring {variant}")
            m, scores = _measure(root, variant, rows, **measure)  # type: ignore[arg-type]
            m.delta = {k: m.metrics[k] - baseline.metrics[k] for k in METRICS}
            m.speedup = baseline.p50_ms / m.p50_ms if m.p50_ms > 0 else 0.0
            judge(m, limits)
            measured.append((variant, root, trained_by, source, m, scores))
        variants: list[Measured] = []
        registered_as: dict[str, str] = {}  # variant -> NAME@V
        for variant, root, trained_by, source, m, scores in measured:
            parent = registered_as[source] if source is not None else info.spec
            report = _report(
                scores,
                rows,
                {
                    "data": evaluated_on,
                    "max_new_tokens": max_new_tokens,
                    "parent": info.spec,
                    "variant": variant,
                },
            )
            say(f"registering {variant}")
            registered = register(
                platform,
                ctx,
                root,
                info.name,
                parent=parent,
                variant=variant,
                eval_report=report,
                benchmark={
                    **m.record(),
                    "baseline": info.spec,
                    "data": evaluated_on,
                    "examples": len(rows),
                    "threads": threads or 0,
                },
                description=f"{variant} of {info.spec}, optimised for CPU inference",
                # its weights were trained again: the run, its data and recipe, not just the parent
                trained_by=trained_by,
            )
            m.spec = registered_as[variant] = registered.spec
            variants.append(m)
    return OptimizeReport(info.spec, evaluated_on, len(rows), limits, baseline, variants, pick(variants))


def pick(variants: Sequence[Measured]) -> Measured | None:
    """The fastest variant (p50 at batch 1) within the budget; None when none is."""
    eligible = [v for v in variants if v.within_budget]
    return min(eligible, key=lambda v: v.p50_ms) if eligible else None
