"""CPU inference: PyTorch eager FP32 against ONNX Runtime FP32 and INT8, greedy seq2seq generation.

What is measured, in one process, one run:

* **Speed**, per architecture (random init, vocabulary 32128, gated-gelu, like google/flan-t5-small and
  flan-t5-base: ``--archs small,base``): the model is saved with :func:`modelyard.training.save_model`,
  exported with :func:`modelyard.optimize.export_onnx` and quantised with
  :func:`modelyard.optimize.quantize_int8`. Every engine generates exactly ``--new-tokens`` (32) tokens
  greedily (end-of-sequence suppressed: ``min_new_tokens`` = ``max_new_tokens``) for the same sources
  (``make_examples``): **eager** is ``model.generate(num_beams=1, do_sample=False)`` of transformers under
  ``torch.inference_mode``; **onnx-fp32** and **onnx-int8** are :class:`modelyard.serving.OnnxSeq2Seq`
  (tokenisation included on both sides). Batch 1: each of ``--sources`` sources alone, ``--repeat``
  times, p50 and p95 of the per-call latency. Batch 16: one batch of 16 sources, ``--repeat`` times,
  sequences per second from the median call. One untimed warm-up call per engine and shape. Both
  runtimes use ``--threads`` threads (default: all cores). Size is the bytes of the model's directory
  (safetensors, or the three graphs with tokenizer and configs).
* **Quality**, on a small model trained here for ``--train-steps`` steps (the ``tiny`` preset, a bare
  AdamW loop over ``make_examples`` data, about a minute on two cores): ROUGE-L
  (:func:`modelyard.training.score`) of PyTorch greedy (:func:`modelyard.training.generate`), ONNX FP32
  and ONNX INT8 on ``--eval`` held-out examples, the difference in points, and the share of outputs
  identical to PyTorch's.

* **Pruned and distilled variants** (``--variants``, on by default): a model trained by the platform's own
  loop (``modelyard.testing.trained_model``: the tiny preset, 300 steps) is registered and run through
  ``modelyard.optimize.optimize`` with structured pruning of 30% of the FFN neurons and a distilled
  one-layer student, each also exported to ONNX INT8: every variant measured against the PyTorch parent on
  the recipe's held-out split (ROUGE-L delta, p50/p95 at batch 1, sequences/s at batch 16, size), exactly
  the table ``yard optimize`` prints.

Goal (issue 5): INT8 ONNX at least 2.5x faster than eager FP32 at batch 1, quality loss under 1 ROUGE-L point.

Run: ``python benchmarks/cpu_inference.py``; shrink it with ``--archs small --repeat 2 --sources 4
--train-steps 200``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ARCHS = ("small", "base")  # T5Dims presets of modelyard.training, sized as flan-t5-small and flan-t5-base
VOCAB = 32128
ENGINES = ("eager", "onnx-fp32", "onnx-int8")


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # nearest rank
    return ordered[int(rank) - 1]


def recipe(preset: str, vocab: int, **hyper: Any) -> Any:
    from modelyard.training import parse_recipe

    return parse_recipe(
        {
            "data": {"train": "bench@1"},
            "tokenizer": {"train": "sentencepiece", "vocab_size": vocab},
            "model": {"init": "scratch", "preset": preset},
            "hyperparameters": {"lr": 3e-3, "max_steps": 1, "seed": 1, **hyper},
        }
    )


def make_tokenizer(root: Path, vocab: int) -> Any:
    from modelyard.training import Example, build_tokenizer, make_examples

    examples = [Example(r["source"], r["target"]) for r in make_examples(3000, seed=11)]
    return build_tokenizer(recipe("tiny", vocab), examples, root / "tokenizer")


def random_model_dir(root: Path, arch: str, tokenizer: Any) -> Path:
    """A seeded random-init model of ``arch`` with the full flan-t5 vocabulary, saved as training saves."""
    from modelyard.training import build_model, save_model

    model = build_model(recipe(arch, 256), vocab_size=VOCAB)
    return save_model(model.eval(), tokenizer, root / f"{arch}-torch")


def train_tiny(root: Path, steps: int, console: Console) -> Path:
    """The ``tiny`` preset trained for ``steps`` AdamW steps (batch 32, linear warm-up and decay) on
    ``make_examples(6000, seed=1)``; saved with its tokenizer."""
    import torch

    from modelyard.training import Example, build_model, build_tokenizer, make_examples, save_model

    examples = [Example(r["source"], r["target"]) for r in make_examples(6000, seed=1)]
    rec = recipe("tiny", 256)
    tokenizer = build_tokenizer(rec, examples, root / "tiny-tokenizer")
    model = build_model(rec, vocab_size=len(tokenizer))
    model.train()
    torch.manual_seed(0)  # dropout
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(examples), (32,), generator=generator).tolist()
        enc = tokenizer([examples[i].source for i in idx], padding=True, return_tensors="pt")
        labels = tokenizer([examples[i].target for i in idx], padding=True, return_tensors="pt")["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % max(1, steps // 5) == 0:
            console.print(f"  train step {step + 1}/{steps}: loss {loss.item():.3f}")
    console.print(f"  trained {steps} steps in {time.perf_counter() - started:.0f} s")
    return save_model(model.eval(), tokenizer, root / "tiny-torch")


def export_both(model_dir: Path, root: Path, name: str) -> tuple[Path, Path]:
    from modelyard.optimize import export_onnx, quantize_int8

    fp32 = export_onnx(model_dir, root / f"{name}-onnx-fp32")
    return fp32, quantize_int8(fp32, root / f"{name}-onnx-int8")


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def speed(
    args: argparse.Namespace, root: Path, arch: str, tokenizer: Any, console: Console
) -> dict[str, Any]:
    import torch

    from modelyard.serving import OnnxSeq2Seq
    from modelyard.training import load_model, make_examples

    model_dir = random_model_dir(root, arch, tokenizer)
    started = time.perf_counter()
    fp32_dir, int8_dir = export_both(model_dir, root, arch)
    console.print(f"  {arch}: export + quantise {time.perf_counter() - started:.0f} s")
    sources = [r["source"] for r in make_examples(max(args.sources, 16), seed=5)]
    n = args.new_tokens
    model = load_model(model_dir).eval()

    def eager(batch: list[str]) -> list[list[int]]:
        enc = tokenizer(batch, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, num_beams=1, do_sample=False)
        return [row[1:] for row in out.tolist()]  # without the decoder start token

    runners: dict[str, Callable[[list[str]], list[list[int]]]] = {"eager": eager}
    for engine, path in (("onnx-fp32", fp32_dir), ("onnx-int8", int8_dir)):
        runner = OnnxSeq2Seq(path, intra_op_threads=args.threads)
        runners[engine] = lambda batch, r=runner: r.generate_ids(
            batch, max_new_tokens=n, min_new_tokens=n, batch_size=len(batch)
        )
    result: dict[str, Any] = {"arch": arch, "size": {}, "p50": {}, "p95": {}, "seq_s": {}, "same": {}}
    result["size"] = {
        "eager": dir_size(model_dir),
        "onnx-fp32": dir_size(fp32_dir),
        "onnx-int8": dir_size(int8_dir),
    }
    batch16 = sources[:16]
    reference = eager(batch16)
    for engine, run in runners.items():
        ids = run(batch16)  # warm-up, and the agreement check
        result["same"][engine] = sum(a == b for a, b in zip(ids, reference, strict=True)) / len(reference)
        run(sources[:1])
    singles: dict[str, list[float]] = {e: [] for e in runners}
    batches: dict[str, list[float]] = {e: [] for e in runners}
    engines = list(runners)
    for rep in range(args.repeat):
        # the order rotates between repeats, so load from elsewhere on the machine falls on every engine alike
        for engine in engines[rep % len(engines) :] + engines[: rep % len(engines)]:
            run = runners[engine]
            singles[engine] += [timed(lambda s=s, r=run: r([s])) for s in sources[: args.sources]]
            batches[engine].append(timed(lambda r=run: r(batch16)))
    for engine in engines:
        result["p50"][engine] = percentile(singles[engine], 50)
        result["p95"][engine] = percentile(singles[engine], 95)
        result["seq_s"][engine] = 16 / statistics.median(batches[engine])
        console.print(
            f"  {arch} {engine}: batch 1 p50 {result['p50'][engine] * 1000:.0f} ms, "
            f"batch 16 {result['seq_s'][engine]:.1f} seq/s"
        )
    return result


def quality(args: argparse.Namespace, root: Path, console: Console) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from modelyard.serving import OnnxSeq2Seq
    from modelyard.training import generate, load_model, make_examples, score

    model_dir = train_tiny(root, args.train_steps, console)
    fp32_dir, int8_dir = export_both(model_dir, root, "tiny")
    rows = list(make_examples(args.eval, seed=2))
    sources, targets = [r["source"] for r in rows], [r["target"] for r in rows]
    model = load_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    preds = {"eager": generate(model, tokenizer, sources, max_new_tokens=48, batch_size=32)}
    for engine, path in (("onnx-fp32", fp32_dir), ("onnx-int8", int8_dir)):
        preds[engine] = OnnxSeq2Seq(path, intra_op_threads=args.threads).generate(
            sources, max_new_tokens=48, batch_size=32
        )
    rouge = {e: score(p, targets, ["rougeL"]).overall["rougeL"] * 100 for e, p in preds.items()}
    same = {e: sum(a == b for a, b in zip(p, preds["eager"], strict=True)) / len(p) for e, p in preds.items()}
    return {"rouge": rouge, "same": same, "n": len(rows)}


def variants(args: argparse.Namespace, root: Path, console: Console) -> Any:
    """``yard optimize`` with pruning and distillation on a model trained by the platform's loop."""
    import copy

    from modelyard import registry
    from modelyard.config import load_settings
    from modelyard.core import Platform
    from modelyard.optimize import optimize
    from modelyard.testing import TINY_RECIPE, trained_model
    from modelyard.training import parse_recipe

    console.print("training the tiny model for the pruned and distilled variants")
    trained = trained_model(root / "variants")
    student = copy.deepcopy(TINY_RECIPE)
    student["experiment"] = "students"
    student["model"] = {
        "init": "scratch",
        "config": {"d_model": 64, "d_ff": 128, "num_layers": 1, "num_heads": 4},
    }
    with Platform(load_settings(home=trained.home)) as platform:
        ctx = platform.context()
        parent = registry.register(platform, ctx, trained.run_id, "bench").spec
        return optimize(
            platform,
            ctx,
            parent,
            quantize=True,
            prune=0.3,
            structured=True,
            distill=parse_recipe(student),
            budget={"rougeL": -0.01},
            max_new_tokens=args.new_tokens,
            latency_samples=args.sources * args.repeat,
            threads=args.threads,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated: small, base")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per engine and shape")
    parser.add_argument("--sources", type=int, default=8, help="distinct sources timed at batch 1")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--train-steps", type=int, default=1200, help="0 skips the quality measurement")
    parser.add_argument("--eval", type=int, default=300, help="held-out examples for the quality measurement")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--no-variants", dest="variants", action="store_false", help="skip the pruned and distilled variants"
    )
    args = parser.parse_args()
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown:
        parser.error(f"unknown architecture(s) {', '.join(unknown)}; choose from {', '.join(ARCHS)}")

    import torch

    torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 130)  # piped: keep the table whole
    console.print(
        f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
        f"{args.new_tokens} new tokens, repeat {args.repeat}"
    )
    speeds: list[dict[str, Any]] = []
    qual: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="yard-bench-cpu-", dir=args.workdir) as tmp:
        root = Path(tmp)
        if archs:
            tokenizer = make_tokenizer(root, 512)
            for arch in archs:
                speeds.append(speed(args, root, arch, tokenizer, console))
        if args.train_steps > 0:
            qual = quality(args, root, console)
        opt = variants(args, root, console) if args.variants else None

    table = Table(title=f"Greedy generation of {args.new_tokens} tokens on CPU ({args.threads} threads)")
    for col in (
        "arch",
        "engine",
        "size MB",
        "b1 p50 ms",
        "b1 p95 ms",
        "b16 seq/s",
        "b1 speed-up",
        "b16 speed-up",
        "ids = eager",
    ):
        table.add_column(col, justify="left" if col in ("arch", "engine") else "right")
    for res in speeds:
        for engine in ENGINES:
            table.add_row(
                res["arch"],
                engine,
                f"{res['size'][engine] / 1e6:.0f}",
                f"{res['p50'][engine] * 1000:.0f}",
                f"{res['p95'][engine] * 1000:.0f}",
                f"{res['seq_s'][engine]:.1f}",
                f"{res['p50']['eager'] / res['p50'][engine]:.2f}x",
                f"{res['seq_s'][engine] / res['seq_s']['eager']:.2f}x",
                f"{res['same'][engine]:.0%}",
            )
    if speeds:
        console.print(table)
    if qual is not None:
        qtable = Table(title=f"Quality on the trained tiny model ({qual['n']} held-out examples)")
        for col in ("engine", "ROUGE-L", "delta vs eager (points)", "outputs = eager"):
            qtable.add_column(col, justify="left" if col == "engine" else "right")
        for engine in ENGINES:
            qtable.add_row(
                engine,
                f"{qual['rouge'][engine]:.2f}",
                f"{qual['rouge'][engine] - qual['rouge']['eager']:+.2f}",
                f"{qual['same'][engine]:.1%}",
            )
        console.print(qtable)
    if opt is not None:
        vtable = Table(
            title=f"Variants of {opt.parent} ({opt.examples} held-out examples, budget {opt.budget})"
        )
        for col in (
            "variant",
            "size MB",
            "b1 p50 ms",
            "b1 p95 ms",
            "b16 seq/s",
            "b1 speed-up",
            "ROUGE-L",
            "delta (points)",
            "in budget",
        ):
            vtable.add_column(col, justify="left" if col in ("variant", "in budget") else "right")
        for m in [opt.baseline, *opt.variants]:
            delta = m.delta.get("rougeL", 0.0) * 100
            vtable.add_row(
                m.variant + (" (picked)" if opt.picked is m else ""),
                f"{m.size_mb:.2f}",
                f"{m.p50_ms:.1f}",
                f"{m.p95_ms:.1f}",
                f"{m.throughput:.1f}",
                f"{m.speedup:.2f}x",
                f"{m.metrics['rougeL'] * 100:.2f}",
                f"{delta:+.2f}",
                "-" if m is opt.baseline else ("yes" if m.within_budget else "no"),
            )
        console.print(vtable)
    for res in speeds:
        ratio = res["p50"]["eager"] / res["p50"]["onnx-int8"]
        verdict = "met" if ratio >= 2.5 else "missed"
        console.print(
            f"goal {res['arch']}: INT8 ONNX {ratio:.2f}x eager FP32 at batch 1 (>= 2.5x): {verdict}"
        )
    if qual is not None:
        loss = qual["rouge"]["eager"] - qual["rouge"]["onnx-int8"]
        verdict = "met" if loss < 1.0 else "missed"
        console.print(f"goal quality: INT8 loses {loss:.2f} ROUGE-L points (< 1): {verdict}")


if __name__ == "__main__":
    main()
