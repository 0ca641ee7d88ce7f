"""A recipe small enough for tests: a one-layer T5 with a 200-token vocabulary over the generated task
(`norm@1`, made with ``yard examples make-data DIR --rows 300 --seed 1 --version norm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RECIPE: dict[str, Any] = {
    "experiment": "t",
    "data": {"train": "norm@1", "validation": "norm@1", "test": "norm@1", "group_field": "locale"},
    "tokenizer": {
        "train": "sentencepiece",
        "vocab_size": 200,
        "max_source_length": 64,
        "max_target_length": 48,
        "max_unk_rate": 0.05,
        "max_truncated_share": 0.05,
    },
    "model": {
        "init": "scratch",
        "config": {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "dropout_rate": 0.1},
    },
    "hyperparameters": {"lr": 3e-3, "batch_size": 8, "max_steps": 12, "seed": 3, "warmup_steps": 2},
    "precision": "fp32",
    "distributed": {"dataloader_workers": 0, "pin_memory": False},
    "train": {
        "log_every_steps": 1,
        "eval_every_steps": 6,
        "eval_max_samples": 8,
        "generation": {"max_new_tokens": 8},
    },
    "checkpoints": {"every_steps": 3, "keep_last": 10, "metric": "loss"},
    "evaluation": {"metrics": ["bleu", "rougeL", "exact_match"], "max_new_tokens": 8, "batch_size": 16},
}


def write_recipe(path: Path, **changes: Any) -> Path:
    recipe = yaml.safe_load(yaml.safe_dump(RECIPE))
    for dotted, value in changes.items():
        node = recipe
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path
