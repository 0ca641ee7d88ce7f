"""Training loop overhead: `yard train`'s loop against a bare PyTorch/transformers loop, same model, same
data, same batches, same optimizer and schedule, one process, one run.

What is measured:

* **bare**: the loop a user would write: ``model(input_ids, attention_mask, labels).loss``, backward, clip,
  AdamW step, linear schedule step, zero_grad; timed from its first step to its last.
* **yard**: :func:`modelyard.training._train.train` on the same recipe, with everything it does per step:
  token-sum loss, throughput accounting, metrics to the run every ``--log-every`` steps (buffered writer
  thread, heartbeat, system metrics), the progress bar off. Its setup (data checkout, tokenizer, model build)
  and its end (model save, artifacts) are not loop time, so it is run twice, with ``--steps`` and with
  ``--steps + --extra`` steps; the difference in wall time is the time of ``--extra`` steps of its loop.
  ``--checkpoint-every`` adds periodic checkpoints to that measurement (off by default: they are I/O the bare
  loop does not do, reported separately when asked for).

Both sides see identical batches (the seeded order of ``epoch_batches``) and identical token counts, so the
throughput ratio is the ratio of step times. Where CUDA is present ``--device cuda`` measures the same on a
GPU, and ``--precision bf16`` the mixed-precision path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def make_home(root: Path, rows: int) -> Path:
    from modelyard.testing import make_platform
    from modelyard.training import write_dataset

    home = root / "home"
    platform = make_platform(home)
    try:
        from modelyard.data import add_version

        files = write_dataset(root / "data", rows, seed=0)
        add_version(platform, platform.context(), files[0].parent, "bench")
    finally:
        platform.close()
    return home


def recipe_dict(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    return {
        "experiment": "bench",
        "data": {"train": "bench@1", "validation": "bench@1"},
        "tokenizer": {
            "train": "sentencepiece",
            "vocab_size": 512,
            "max_source_length": 64,
            "max_target_length": 48,
        },
        "model": {"init": "scratch", "preset": args.preset},
        "hyperparameters": {
            "lr": 1e-3,
            "batch_size": args.batch_size,
            "max_steps": steps,
            "warmup_steps": 10,
            "seed": 1,
        },
        "precision": args.precision,
        "distributed": {"dataloader_workers": 0, "pin_memory": False},
        "train": {"log_every_steps": args.log_every},
        "checkpoints": {"every_steps": args.checkpoint_every, "keep_last": 1, "keep_best": False},
    }


def run_yard(home: Path, args: argparse.Namespace, steps: int) -> float:
    """Wall seconds of a whole `train()` call with ``steps`` steps."""
    from modelyard.config import load_settings
    from modelyard.core import Platform
    from modelyard.tracking import Client
    from modelyard.training import parse_recipe
    from modelyard.training._train import train

    recipe = parse_recipe(recipe_dict(args, steps))
    with Platform(load_settings(home=home)) as platform, Client(platform) as client:
        t0 = time.perf_counter()
        train(recipe, client=client, device=args.device, progress=False, final_eval=False)
        return time.perf_counter() - t0


def bare_loop(home: Path, args: argparse.Namespace, steps: int) -> tuple[float, int]:
    """The plain loop over the same batches: (seconds for ``steps`` steps, tokens per those steps)."""
    import torch
    import transformers

    from modelyard.config import load_settings
    from modelyard.core import Platform
    from modelyard.training import build_model, build_tokenizer, encode_examples, load_splits, parse_recipe
    from modelyard.training._model import autocast_context
    from modelyard.training._train import _collate, epoch_batches

    recipe = parse_recipe(recipe_dict(args, steps))
    with Platform(load_settings(home=home)) as platform:
        splits = load_splits(platform, platform.context(), recipe)
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(recipe, splits.train, Path(tmp))
    enc = encode_examples(tok, splits.train, recipe)
    rows = list(zip(enc["input_ids"], enc["labels"], strict=True))
    model = build_model(
        recipe, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = transformers.get_linear_schedule_with_warmup(opt, 10, steps)
    batches = [b for epoch in range(1000) for b in epoch_batches(len(rows), args.batch_size, 1, epoch)]
    tokens = 0
    t0 = time.perf_counter()
    for step in range(steps):
        cpu_batch = _collate([rows[i] for i in batches[step]], tok.pad_token_id)
        batch = {k: v.to(device) for k, v in cpu_batch.items()}
        tokens += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
        with autocast_context(args.precision, device):  # type: ignore[arg-type]
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="yard's short run (setup + these steps)")
    parser.add_argument("--extra", type=int, default=200, help="steps measured (yard: long minus short run)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each side; medians are shown")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    console = Console()
    bare_s: list[float] = []
    yard_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="yard-bench-train-") as tmp:
        home = make_home(Path(tmp), args.rows)
        # warm caches; and the token count of the measured steps
        _, tokens = bare_loop(home, args, args.extra)
        for i in range(args.repeat):
            # interleaved, so drifts in machine speed hit both sides alike
            bare_s.append(bare_loop(home, args, args.extra)[0])
            long = run_yard(home, args, args.steps + args.extra)
            short = run_yard(home, args, args.steps)
            yard_s.append(long - short)
            console.print(
                f"round {i + 1}: bare {bare_s[-1]:.2f} s, yard {yard_s[-1]:.2f} s "
                f"({(yard_s[-1] / bare_s[-1] - 1) * 100:+.1f}%)"
            )
    b, y = statistics.median(bare_s), statistics.median(yard_s)
    # Each round measures both sides back to back: the median of the per-round ratios is less exposed to
    # the machine's speed drifting between rounds than the ratio of the medians.
    paired = statistics.median(ys / bs for ys, bs in zip(yard_s, bare_s, strict=True))
    title = f"{args.extra} steps, {args.preset}, batch {args.batch_size}, {args.device}/{args.precision}"
    table = Table(title=title)
    for col in ("loop", "seconds", "tokens/s", "vs bare"):
        table.add_column(col)
    table.add_row("bare PyTorch/transformers", f"{b:.2f}", f"{tokens / b:,.0f}", "1.00x")
    table.add_row("yard train", f"{y:.2f}", f"{tokens / y:,.0f}", f"{b / y:.3f}x")
    console.print(table)
    console.print(
        f"overhead of yard's loop: {(y / b - 1) * 100:+.1f}% (medians), {(paired - 1) * 100:+.1f}% "
        f"(median of the {len(bare_s)} paired rounds); goal: under 5%"
    )


if __name__ == "__main__":
    main()
