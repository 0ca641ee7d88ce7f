"""The validation loss of the training loop: plain token cross-entropy whatever the training loss is, so
``val_loss`` compares across runs (and HPO trials) with different label smoothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from modelyard.training import make_examples, parse_recipe  # noqa: E402
from modelyard.training._data import Example  # noqa: E402
from modelyard.training._model import build_model  # noqa: E402
from modelyard.training._tokenize import train_sentencepiece  # noqa: E402
from modelyard.training._train import _Setup, validation_loss  # noqa: E402


def _recipe(label_smoothing: float) -> Any:
    return parse_recipe(
        {
            "data": {"train": "norm@1"},
            "tokenizer": {"train": "sentencepiece", "vocab_size": 120, "max_source_length": 64},
            "model": {
                "init": "scratch",
                "config": {"d_model": 16, "d_ff": 32, "num_layers": 1, "num_heads": 2},
            },
            "hyperparameters": {"lr": 1e-3, "max_steps": 1, "label_smoothing": label_smoothing},
            "precision": "fp32",
        }
    )


def _setup(recipe: Any, model: Any, tokenizer: Any) -> _Setup:
    none: Any = None
    return _Setup(
        recipe,
        none,
        torch.device("cpu"),
        "fp32",
        model,
        model,
        tokenizer,
        none,
        none,
        none,
        1,
        1,
        none,
        [],
        [],
        False,
    )


def test_validation_loss_is_plain_cross_entropy_under_label_smoothing(tmp_path: Path) -> None:
    rows = [Example(r["source"], r["target"]) for r in make_examples(120, seed=5)]
    tokenizer = train_sentencepiece([t for e in rows for t in (e.source, e.target)], tmp_path, vocab_size=120)
    plain, smoothed = _recipe(0.0), _recipe(0.4)
    model = build_model(plain, vocab_size=len(tokenizer))
    val = rows[:16]
    expected = validation_loss(_setup(plain, model, tokenizer), val)
    assert validation_loss(_setup(smoothed, model, tokenizer), val) == pytest.approx(expected, rel=1e-6)
